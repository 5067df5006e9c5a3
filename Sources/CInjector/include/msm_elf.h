// The one ELF64 reader of ms-service-metric: symbols to addresses and file offsets, named
// sections, the first loadable segment. Used by the injector (the target's libpython or
// executable, libc), the PEP 768 path (.PyRuntime) and the agent (the provider library's
// marker and semaphore, through Swift).
//
// The files it reads are chosen by the processes the agent observes, so every offset,
// count and size taken from a file is checked against the file's size with
// overflow-checked arithmetic and against fixed caps, and a malformed file is a one-line
// error, never a crash or an unbounded allocation (Tests/fuzz exercises this).
#ifndef MSM_ELF_H
#define MSM_ELF_H

#include <elf.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/// Where the bytes come from: a file descriptor (pread) or memory.
struct msm_elf_source {
    int fd;                 // >= 0: pread from it (not closed by the reader)
    const uint8_t *bytes;   // fd < 0: this buffer
    uint64_t size;          // bytes in the file or buffer
};

struct msm_elf_table {      // a loaded SHT_DYNSYM or SHT_SYMTAB with its strings
    Elf64_Sym *syms;
    size_t count;
    char *strings;          // NUL-terminated copy (one extra byte)
    size_t strings_size;
    int loaded;             // 1 loaded, -1 absent or unreadable
};

struct msm_elf {
    struct msm_elf_source src;
    Elf64_Ehdr eh;
    Elf64_Phdr *ph;
    size_t nph;
    Elf64_Shdr *sh;         // NULL when the file has no section headers
    size_t nsh;
    char *shstr;            // section names (NUL-terminated copy), NULL if none
    size_t shstr_size;
    struct msm_elf_table dynsym, symtab;
};

struct msm_elf_symbol {
    uint64_t value;         // st_value: the virtual address in the file's own layout
    uint64_t size;          // st_size
    uint64_t file_offset;   // where the symbol's bytes are in the file (what uprobes want)
    int has_file_offset;    // 0: not in any section or segment with file contents
};

enum {
    MSM_ELF_DYNSYM = 1,     // search .dynsym
    MSM_ELF_SYMTAB = 2,     // search .symtab
};

/// Caps on what a file may make the reader allocate.
#define MSM_ELF_MAX_HEADERS 65536u           // program or section headers
#define MSM_ELF_MAX_TABLE (64u << 20)        // one table (headers, symbols, strings), bytes

/// Opens an ELF64 little-endian object for the host's machine. 0, or -1 with a one-line
/// reason in err (which names `what`, e.g. the path).
int msm_elf_open(struct msm_elf *e, struct msm_elf_source src, const char *what, char *err, size_t errlen);
void msm_elf_close(struct msm_elf *e);

/// A defined symbol (not undefined, value non-zero) named `name`, searching the tables in
/// `tables` (MSM_ELF_DYNSYM, then MSM_ELF_SYMTAB). 0 found; -1 not found.
int msm_elf_find_symbol(struct msm_elf *e, const char *name, int tables, struct msm_elf_symbol *out);

/// The allocated section `name`: its address, size and flags. 0 found; -1 not found.
int msm_elf_section(const struct msm_elf *e, const char *name, uint64_t *addr, uint64_t *size);

/// The first PT_LOAD segment: its virtual address and file offset (for the load bias). 0 or -1.
int msm_elf_first_load(const struct msm_elf *e, uint64_t *vaddr, uint64_t *offset);

/// File offset of a virtual address through the PT_LOAD segment holding it. 0 or -1.
int msm_elf_offset_of(const struct msm_elf *e, uint64_t vaddr, uint64_t *offset);

/// Opens `path` for reading without blocking (a FIFO or device named by a hostile process
/// must not hang the caller) and only if it is a regular file of at most max_size bytes.
/// Returns the fd (O_CLOEXEC) and its size, or -1 with errno set (ENOTSUP: not a regular
/// file, EFBIG: too large) and a one-line reason in err.
int msm_open_regular(const char *path, uint64_t max_size, uint64_t *size, char *err, size_t errlen);

#ifdef __cplusplus
}
#endif

#endif
