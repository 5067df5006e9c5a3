// The ELF64 reader (see include/msm_elf.h). Every number read from the file is untrusted.
#define _GNU_SOURCE
#include "msm_elf.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

__attribute__((format(printf, 3, 4)))
static int elf_fail(char *err, size_t errlen, const char *fmt, ...) {
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return -1;
}

/// len bytes at offset, or -1 if any of them lies outside the source.
static int src_read(const struct msm_elf_source *s, uint64_t offset, void *buf, size_t len) {
    uint64_t end;
    if (__builtin_add_overflow(offset, (uint64_t)len, &end) || end > s->size) return -1;
    if (s->fd < 0) {
        memcpy(buf, s->bytes + offset, len);
        return 0;
    }
    size_t done = 0;
    while (done < len) {
        ssize_t k = pread(s->fd, (char *)buf + done, len - done, (off_t)(offset + done));
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) return -1;
        done += (size_t)k;
    }
    return 0;
}

/// count entries of entsize bytes at offset, copied into a new array of `want`-byte entries
/// (entsize may be larger than want: the extra bytes are skipped). NULL if out of bounds.
static void *read_table(const struct msm_elf_source *s, uint64_t offset, uint64_t count, uint64_t entsize,
                        size_t want) {
    uint64_t bytes;
    if (count == 0 || entsize < want
        || __builtin_mul_overflow(count, entsize, &bytes) || bytes > MSM_ELF_MAX_TABLE)
        return NULL;
    uint64_t end;
    if (__builtin_add_overflow(offset, bytes, &end) || end > s->size) return NULL;
    char *out = calloc((size_t)count, want);
    if (!out) return NULL;
    if (entsize == want) {
        if (src_read(s, offset, out, (size_t)bytes) != 0) { free(out); return NULL; }
        return out;
    }
    for (uint64_t i = 0; i < count; i++) {
        if (src_read(s, offset + i * entsize, out + i * want, want) != 0) { free(out); return NULL; }
    }
    return out;
}

/// A string table copied with one extra NUL.
static char *read_strings(const struct msm_elf_source *s, uint64_t offset, uint64_t size) {
    if (size == 0 || size > MSM_ELF_MAX_TABLE) return NULL;
    char *out = malloc((size_t)size + 1);
    if (!out) return NULL;
    if (src_read(s, offset, out, (size_t)size) != 0) { free(out); return NULL; }
    out[size] = 0;
    return out;
}

static uint16_t host_machine(void) {
#if defined(__x86_64__)
    return EM_X86_64;
#elif defined(__aarch64__)
    return EM_AARCH64;
#else
    return EM_NONE;
#endif
}

int msm_elf_open(struct msm_elf *e, struct msm_elf_source src, const char *what, char *err, size_t errlen) {
    memset(e, 0, sizeof *e);
    e->src = src;
    if (!what) what = "the file";
    if (src_read(&src, 0, &e->eh, sizeof e->eh) != 0)
        return elf_fail(err, errlen, "%s is too short for an ELF header", what);
    if (memcmp(e->eh.e_ident, ELFMAG, SELFMAG) != 0)
        return elf_fail(err, errlen, "%s is not an ELF file", what);
    if (e->eh.e_ident[EI_CLASS] != ELFCLASS64 || e->eh.e_ident[EI_DATA] != ELFDATA2LSB)
        return elf_fail(err, errlen, "%s is not a 64-bit little-endian ELF file", what);
    if (e->eh.e_machine != host_machine())
        return elf_fail(err, errlen, "%s is for another machine (e_machine %u)", what, e->eh.e_machine);

    if (e->eh.e_phnum) {
        e->ph = read_table(&src, e->eh.e_phoff, e->eh.e_phnum, e->eh.e_phentsize, sizeof(Elf64_Phdr));
        if (!e->ph) { msm_elf_close(e); return elf_fail(err, errlen, "%s: bad program header table", what); }
        e->nph = e->eh.e_phnum;
    }
    if (e->eh.e_shoff) {
        // More than SHN_LORESERVE sections: the count and the names' index live in section 0.
        Elf64_Shdr first;
        uint64_t nsh = e->eh.e_shnum, shstrndx = e->eh.e_shstrndx;
        if (e->eh.e_shentsize < sizeof(Elf64_Shdr) || src_read(&src, e->eh.e_shoff, &first, sizeof first) != 0) {
            msm_elf_close(e);
            return elf_fail(err, errlen, "%s: bad section header table", what);
        }
        if (nsh == 0) nsh = first.sh_size;
        if (shstrndx == SHN_XINDEX) shstrndx = first.sh_link;
        if (nsh == 0 || nsh > MSM_ELF_MAX_HEADERS) {
            msm_elf_close(e);
            return elf_fail(err, errlen, "%s: bad section count", what);
        }
        e->sh = read_table(&src, e->eh.e_shoff, nsh, e->eh.e_shentsize, sizeof(Elf64_Shdr));
        if (!e->sh) { msm_elf_close(e); return elf_fail(err, errlen, "%s: bad section header table", what); }
        e->nsh = (size_t)nsh;
        if (shstrndx != SHN_UNDEF && shstrndx < nsh && e->sh[shstrndx].sh_type == SHT_STRTAB) {
            e->shstr = read_strings(&src, e->sh[shstrndx].sh_offset, e->sh[shstrndx].sh_size);
            if (e->shstr) e->shstr_size = (size_t)e->sh[shstrndx].sh_size;
        }
    }
    return 0;
}

static void free_table(struct msm_elf_table *t) {
    free(t->syms);
    free(t->strings);
    memset(t, 0, sizeof *t);
}

void msm_elf_close(struct msm_elf *e) {
    free(e->ph);
    free(e->sh);
    free(e->shstr);
    free_table(&e->dynsym);
    free_table(&e->symtab);
    memset(e, 0, sizeof *e);
    e->src.fd = -1;
}

/// Loads the first section of `type` and its linked string table (once).
static struct msm_elf_table *load_table(struct msm_elf *e, uint32_t type) {
    struct msm_elf_table *t = type == SHT_DYNSYM ? &e->dynsym : &e->symtab;
    if (t->loaded) return t->loaded > 0 ? t : NULL;
    t->loaded = -1;
    for (size_t i = 0; i < e->nsh; i++) {
        const Elf64_Shdr *s = &e->sh[i];
        if (s->sh_type != type) continue;
        if (s->sh_link >= e->nsh || e->sh[s->sh_link].sh_type != SHT_STRTAB) return NULL;
        uint64_t entsize = s->sh_entsize ? s->sh_entsize : sizeof(Elf64_Sym);
        uint64_t count = s->sh_size / entsize;
        if (count == 0) return NULL;
        t->syms = read_table(&e->src, s->sh_offset, count, entsize, sizeof(Elf64_Sym));
        const Elf64_Shdr *str = &e->sh[s->sh_link];
        t->strings = read_strings(&e->src, str->sh_offset, str->sh_size);
        if (!t->syms || !t->strings) { free_table(t); t->loaded = -1; return NULL; }
        t->count = (size_t)count;
        t->strings_size = (size_t)str->sh_size;
        t->loaded = 1;
        return t;
    }
    return NULL;
}

/// File offset of a symbol: through its section when it has one with file contents, else
/// through the PT_LOAD segment that holds its address.
static int symbol_offset(const struct msm_elf *e, const Elf64_Sym *s, uint64_t *offset) {
    if (s->st_shndx != SHN_UNDEF && s->st_shndx < SHN_LORESERVE && s->st_shndx < e->nsh) {
        const Elf64_Shdr *home = &e->sh[s->st_shndx];
        uint64_t delta, off, end;
        if (home->sh_type != SHT_NOBITS && s->st_value >= home->sh_addr
            && !__builtin_sub_overflow(s->st_value, home->sh_addr, &delta) && delta < home->sh_size
            && !__builtin_add_overflow(home->sh_offset, delta, &off)
            && !__builtin_add_overflow(home->sh_offset, home->sh_size, &end) && end <= e->src.size) {
            *offset = off;
            return 0;
        }
    }
    return msm_elf_offset_of(e, s->st_value, offset);
}

int msm_elf_find_symbol(struct msm_elf *e, const char *name, int tables, struct msm_elf_symbol *out) {
    uint32_t kinds[2] = { SHT_DYNSYM, SHT_SYMTAB };
    int flags[2] = { MSM_ELF_DYNSYM, MSM_ELF_SYMTAB };
    for (int k = 0; k < 2; k++) {
        if (!(tables & flags[k])) continue;
        struct msm_elf_table *t = load_table(e, kinds[k]);
        if (!t) continue;
        for (size_t i = 0; i < t->count; i++) {
            const Elf64_Sym *s = &t->syms[i];
            if (s->st_shndx == SHN_UNDEF || s->st_value == 0 || s->st_name >= t->strings_size) continue;
            if (strcmp(t->strings + s->st_name, name) != 0) continue;
            memset(out, 0, sizeof *out);
            out->value = s->st_value;
            out->size = s->st_size;
            out->has_file_offset = symbol_offset(e, s, &out->file_offset) == 0;
            return 0;
        }
    }
    return -1;
}

int msm_elf_section(const struct msm_elf *e, const char *name, uint64_t *addr, uint64_t *size) {
    if (!e->shstr) return -1;
    for (size_t i = 0; i < e->nsh; i++) {
        const Elf64_Shdr *s = &e->sh[i];
        if (s->sh_name >= e->shstr_size || strcmp(e->shstr + s->sh_name, name) != 0) continue;
        if (!(s->sh_flags & SHF_ALLOC) || s->sh_addr == 0) return -1;
        *addr = s->sh_addr;
        *size = s->sh_size;
        return 0;
    }
    return -1;
}

int msm_elf_first_load(const struct msm_elf *e, uint64_t *vaddr, uint64_t *offset) {
    for (size_t i = 0; i < e->nph; i++) {
        if (e->ph[i].p_type != PT_LOAD) continue;
        *vaddr = e->ph[i].p_vaddr;
        *offset = e->ph[i].p_offset;
        return 0;
    }
    return -1;
}

int msm_elf_offset_of(const struct msm_elf *e, uint64_t vaddr, uint64_t *offset) {
    for (size_t i = 0; i < e->nph; i++) {
        const Elf64_Phdr *p = &e->ph[i];
        uint64_t end, delta, off;
        if (p->p_type != PT_LOAD || __builtin_add_overflow(p->p_vaddr, p->p_filesz, &end)) continue;
        if (vaddr < p->p_vaddr || vaddr >= end) continue;
        delta = vaddr - p->p_vaddr;
        if (__builtin_add_overflow(p->p_offset, delta, &off) || off >= e->src.size) return -1;
        *offset = off;
        return 0;
    }
    return -1;
}

int msm_open_regular(const char *path, uint64_t max_size, uint64_t *size, char *err, size_t errlen) {
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
    if (fd < 0) {
        int saved = errno;
        elf_fail(err, errlen, "cannot open %s: %s", path, strerror(saved));
        errno = saved;
        return -1;
    }
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int saved = errno;
        close(fd);
        elf_fail(err, errlen, "cannot stat %s: %s", path, strerror(saved));
        errno = saved;
        return -1;
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        elf_fail(err, errlen, "%s is not a regular file", path);
        errno = ENOTSUP;
        return -1;
    }
    if ((uint64_t)st.st_size > max_size) {
        close(fd);
        elf_fail(err, errlen, "%s is larger than %llu bytes", path, (unsigned long long)max_size);
        errno = EFBIG;
        return -1;
    }
    // Reads are preads of checked ranges; blocking mode back on for them.
    int flags = fcntl(fd, F_GETFL);
    if (flags >= 0) fcntl(fd, F_SETFL, flags & ~O_NONBLOCK);
    *size = (uint64_t)st.st_size;
    return fd;
}
