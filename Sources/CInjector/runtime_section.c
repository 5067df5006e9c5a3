// Locates CPython's _PyRuntime (3.14+: the ELF section .PyRuntime) in another process.
#define _GNU_SOURCE
#include "runtime_section.h"

#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct span {
    uint64_t start, end, offset;
};

static int say(char *err, size_t errlen, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    return -1;
}

static int read_at(int fd, void *buf, size_t len, uint64_t off) {
    size_t done = 0;
    while (done < len) {
        ssize_t k = pread(fd, (char *)buf + done, len - done, (off_t)(off + done));
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) return -1;
        done += (size_t)k;
    }
    return 0;
}

/// The mappings of `path` in pid, in address order; returns their count (at most cap).
static size_t spans_of(pid_t pid, const char *path, struct span *out, size_t cap) {
    char name[64];
    snprintf(name, sizeof name, "/proc/%d/maps", pid);
    FILE *f = fopen(name, "re");
    if (!f) return 0;
    size_t n = 0;
    char line[1200];
    while (n < cap && fgets(line, sizeof line, f)) {
        unsigned long long s, e, off;
        int pos = 0;
        if (sscanf(line, "%llx-%llx %*s %llx %*s %*s %n", &s, &e, &off, &pos) < 3 || pos == 0) continue;
        char *p = line + pos;
        p[strcspn(p, "\n")] = 0;
        if (strcmp(p, path) != 0) continue;
        out[n++] = (struct span){ s, e, off };
    }
    fclose(f);
    return n;
}

/// Finds the defined symbol `want` in the dynamic symbol table; its st_value/st_size.
static int dynsym_lookup(int fd, const Elf64_Shdr *sh, size_t nsh, const char *want,
                         uint64_t *value, uint64_t *size) {
    for (size_t i = 0; i < nsh; i++) {
        if (sh[i].sh_type != SHT_DYNSYM || sh[i].sh_link >= nsh) continue;
        const Elf64_Shdr *st = &sh[sh[i].sh_link];
        if (sh[i].sh_size > (64u << 20) || st->sh_size > (64u << 20)) return -1;
        Elf64_Sym *syms = malloc(sh[i].sh_size + 1);
        char *strs = malloc(st->sh_size + 1);
        int found = -1;
        if (syms && strs && read_at(fd, syms, sh[i].sh_size, sh[i].sh_offset) == 0
            && read_at(fd, strs, st->sh_size, st->sh_offset) == 0) {
            strs[st->sh_size] = 0;
            for (size_t k = 0; k < sh[i].sh_size / sizeof *syms; k++) {
                if (syms[k].st_shndx == SHN_UNDEF || syms[k].st_value == 0 || syms[k].st_name >= st->sh_size) continue;
                if (strcmp(strs + syms[k].st_name, want) != 0) continue;
                *value = syms[k].st_value;
                *size = syms[k].st_size;
                found = 0;
                break;
            }
        }
        free(syms);
        free(strs);
        return found;
    }
    return -1;
}

int msm_find_pyruntime(pid_t pid, const char *object_path, uint64_t *addr, uint64_t *size,
                       char *err, size_t errlen) {
    struct span spans[64];
    size_t nspans = spans_of(pid, object_path, spans, 64);
    if (nspans == 0) return say(err, errlen, "%s is not mapped in pid %d", object_path, pid);

    char path[700];
    snprintf(path, sizeof path, "/proc/%d/map_files/%llx-%llx", pid,
             (unsigned long long)spans[0].start, (unsigned long long)spans[0].end);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        snprintf(path, sizeof path, "/proc/%d/root%s", pid, object_path);
        fd = open(path, O_RDONLY | O_CLOEXEC);
    }
    if (fd < 0) return say(err, errlen, "cannot open %s of pid %d: %s", object_path, pid, strerror(errno));

    int rc = -1;
    Elf64_Shdr *sh = NULL;
    char *names = NULL;
    Elf64_Ehdr eh;
    if (read_at(fd, &eh, sizeof eh, 0) != 0 || memcmp(eh.e_ident, ELFMAG, SELFMAG) != 0
        || eh.e_ident[EI_CLASS] != ELFCLASS64 || eh.e_phentsize != sizeof(Elf64_Phdr)
        || eh.e_shentsize != sizeof(Elf64_Shdr)) {
        say(err, errlen, "%s is not a 64-bit ELF object", object_path);
        goto out;
    }

    // Load bias: where the first PT_LOAD went (the mapping at its page-aligned file offset).
    uint64_t bias = 0;
    int have_bias = 0;
    for (unsigned i = 0; i < eh.e_phnum && !have_bias; i++) {
        Elf64_Phdr ph;
        if (read_at(fd, &ph, sizeof ph, eh.e_phoff + (uint64_t)i * sizeof ph) != 0) break;
        if (ph.p_type != PT_LOAD) continue;
        for (size_t k = 0; k < nspans; k++) {
            if (spans[k].offset != (ph.p_offset & ~(uint64_t)0xfff)) continue;
            bias = spans[k].start - (ph.p_vaddr & ~(uint64_t)0xfff);
            have_bias = 1;
            break;
        }
        break;  // only the first PT_LOAD
    }
    if (!have_bias) { say(err, errlen, "cannot find the load address of %s in pid %d", object_path, pid); goto out; }

    // Section headers and their names.
    size_t nsh = eh.e_shnum;
    if (eh.e_shoff == 0) { say(err, errlen, "%s has no section headers", object_path); goto out; }
    Elf64_Shdr first;
    if (read_at(fd, &first, sizeof first, eh.e_shoff) != 0) { say(err, errlen, "cannot read %s", object_path); goto out; }
    if (nsh == 0) nsh = first.sh_size;  // more than SHN_LORESERVE sections
    size_t shstrndx = eh.e_shstrndx == SHN_XINDEX ? first.sh_link : eh.e_shstrndx;
    if (nsh == 0 || nsh > 65536 || shstrndx >= nsh) { say(err, errlen, "%s: bad section table", object_path); goto out; }
    sh = malloc(nsh * sizeof *sh);
    if (!sh || read_at(fd, sh, nsh * sizeof *sh, eh.e_shoff) != 0) { say(err, errlen, "cannot read the sections of %s", object_path); goto out; }
    const Elf64_Shdr *strsec = &sh[shstrndx];
    if (strsec->sh_size == 0 || strsec->sh_size > (16u << 20)) { say(err, errlen, "%s: bad section names", object_path); goto out; }
    names = malloc(strsec->sh_size + 1);
    if (!names || read_at(fd, names, strsec->sh_size, strsec->sh_offset) != 0) { say(err, errlen, "cannot read %s", object_path); goto out; }
    names[strsec->sh_size] = 0;

    for (size_t i = 0; i < nsh; i++) {
        if (sh[i].sh_name >= strsec->sh_size || strcmp(names + sh[i].sh_name, ".PyRuntime") != 0) continue;
        if (!(sh[i].sh_flags & SHF_ALLOC) || sh[i].sh_addr == 0) break;
        *addr = bias + sh[i].sh_addr;
        *size = sh[i].sh_size;
        rc = 0;
        goto out;
    }
    uint64_t value = 0, symsize = 0;
    if (dynsym_lookup(fd, sh, nsh, "_PyRuntime", &value, &symsize) == 0) {
        *addr = bias + value;
        *size = symsize;
        rc = 0;
        goto out;
    }
    say(err, errlen, "%s has neither a .PyRuntime section nor a _PyRuntime symbol", object_path);
out:
    free(sh);
    free(names);
    close(fd);
    return rc;
}
