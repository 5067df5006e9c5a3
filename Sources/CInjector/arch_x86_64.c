// x86-64 side of the injector (see arch.h): registers, the return chain, the sigreturn
// frame, the C library's gadgets, syscall numbers.
//
// Why a sigreturn frame. A thread made to call a function must get its exact state back
// afterwards. The agent does that with ptrace when it can; but the agent may be killed at
// any instant (SIGKILL, OOM), and the kernel then detaches the thread with whatever
// registers it has. So the call itself must end in the restore: every chain returns into
// the C library's signal-return trampoline (__restore_rt: "mov $15,%rax; syscall") with a
// frame on the stack that holds the saved registers, the FPU/SSE state and the signal
// mask, and the kernel's rt_sigreturn puts them back. The agent, when alive, stops the
// thread at the trampoline (a uprobe, see msm_inject.bpf.c) and restores the full
// extended state itself, so the frame is used only when nobody is left to do it.
//
// What the frame restores: every general register, rip, rsp, eflags, the signal mask, and
// the legacy FXSAVE area (x87, MXCSR, xmm0-15). The upper halves of the AVX registers are
// reset (the frame carries no XSAVE header): at both places a thread is taken (the entry
// of PyEval_SaveThread, and a libc syscall wrapper), they are caller-saved and dead.
#define _GNU_SOURCE
#include "arch.h"

#if defined(__x86_64__)

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ptrace.h>
#include <sys/uio.h>

#ifndef NT_X86_XSTATE
#define NT_X86_XSTATE 0x202
#endif

// The kernel's x86-64 signal frame (arch/x86/include/asm/sigframe.h, uapi sigcontext.h);
// declared here because glibc's ucontext_t has another layout.
struct k_sigcontext {
    uint64_t r8, r9, r10, r11, r12, r13, r14, r15, rdi, rsi, rbp, rbx, rdx, rax, rcx, rsp, rip, eflags;
    uint16_t cs, gs, fs, ss;
    uint64_t err, trapno, oldmask, cr2, fpstate, reserved1[8];
};
struct k_stack {
    uint64_t ss_sp;
    int32_t ss_flags;
    int32_t pad;
    uint64_t ss_size;
};
struct k_ucontext {
    uint64_t uc_flags, uc_link;
    struct k_stack uc_stack;
    struct k_sigcontext uc_mcontext;
    uint64_t uc_sigmask;
};
struct k_rt_sigframe {
    uint64_t pretcode;  // the return address the last call pops: the trampoline
    struct k_ucontext uc;
    uint8_t info[128];
};
_Static_assert(sizeof(struct k_sigcontext) == 256, "struct sigcontext (x86-64)");
_Static_assert(sizeof(struct k_ucontext) == 304, "struct ucontext (x86-64)");
_Static_assert(sizeof(struct k_rt_sigframe) == 440, "struct rt_sigframe (x86-64)");

enum {
    RED_ZONE = 128,           // the System V ABI lets a leaf function use it below rsp
    AREA = 8192,              // one of the two alternating areas below the red zone
    FXSAVE_SIZE = 512,
    FX_SW_RESERVED = 464,     // bytes 464..511: where an XSAVE frame keeps its magic
    MAX_SLOTS = 32,
    SYSCALL_INSN_LEN = 2,     // 0f 05
};
#define K_ERESTARTSYS 512
#define K_ERESTARTNOHAND 514

int arch_save(pid_t tid, struct arch_context *c) {
    memset(c, 0, sizeof *c);
    if (ptrace(PTRACE_GETREGS, tid, 0, &c->regs) != 0) return -1;
    c->xstate = malloc(64 * 1024);
    if (c->xstate) {
        struct iovec iov = { c->xstate, 64 * 1024 };
        if (ptrace(PTRACE_GETREGSET, tid, (void *)NT_X86_XSTATE, &iov) == 0) c->xstate_len = iov.iov_len;
    }
    c->have_fp = ptrace(PTRACE_GETFPREGS, tid, 0, &c->fp) == 0;
    return 0;
}

int arch_restore(pid_t tid, const struct arch_context *c) {
    int rc = 0;
    if (c->xstate_len) {
        struct iovec iov = { c->xstate, c->xstate_len };
        if (ptrace(PTRACE_SETREGSET, tid, (void *)NT_X86_XSTATE, &iov) != 0) rc = -1;
    }
    if ((!c->xstate_len || rc) && c->have_fp) rc = ptrace(PTRACE_SETFPREGS, tid, 0, &c->fp) == 0 ? 0 : -1;
    if (ptrace(PTRACE_SETREGS, tid, 0, &c->regs) != 0) rc = -1;
    return rc;
}

void arch_context_free(struct arch_context *c) {
    free(c->xstate);
    c->xstate = NULL;
    c->xstate_len = 0;
}

uint64_t arch_pc(const struct arch_context *c) { return c->regs.rip; }
uint64_t arch_sp(const struct arch_context *c) { return c->regs.rsp; }
long arch_syscall_nr(const struct arch_context *c) { return (long)c->regs.orig_rax; }
long long arch_syscall_ret(const struct arch_context *c) { return (long long)c->regs.rax; }
uint64_t arch_syscall_arg0(const struct arch_context *c) { return c->regs.rdi; }

int arch_get_pc_sp(pid_t tid, uint64_t *pc, uint64_t *sp) {
    struct user_regs_struct r;
    if (ptrace(PTRACE_GETREGS, tid, 0, &r) != 0) return -1;
    *pc = r.rip;
    *sp = r.rsp;
    return 0;
}

/// The saved state as the sigreturn frame must hold it.
static void fill_sigcontext(struct k_sigcontext *sc, const struct user_regs_struct *r, enum arch_resume resume) {
    sc->r8 = r->r8; sc->r9 = r->r9; sc->r10 = r->r10; sc->r11 = r->r11;
    sc->r12 = r->r12; sc->r13 = r->r13; sc->r14 = r->r14; sc->r15 = r->r15;
    sc->rdi = r->rdi; sc->rsi = r->rsi; sc->rbp = r->rbp; sc->rbx = r->rbx;
    sc->rdx = r->rdx; sc->rax = r->rax; sc->rcx = r->rcx; sc->rsp = r->rsp;
    sc->rip = r->rip; sc->eflags = r->eflags;
    sc->cs = (uint16_t)r->cs;
    sc->ss = (uint16_t)r->ss;
    if (resume == ARCH_RESUME_RESTART_SYSCALL) {
        // What the kernel itself does for -ERESTARTSYS/-ERESTARTNOHAND when no handler
        // runs: back to the syscall instruction with the syscall number in rax.
        sc->rip = r->rip - SYSCALL_INSN_LEN;
        sc->rax = r->orig_rax;
    }
}

int arch_plan_chain(const struct arch_context *ctx, enum arch_resume resume, uint64_t sigmask,
                    const struct arch_gadgets *g, const struct arch_call *calls, int ncalls,
                    const void *data, size_t data_len, int slot, struct arch_plan *plan) {
    memset(plan, 0, sizeof *plan);
    if (ncalls < 1 || ncalls > 4 || slot < 0 || slot > 1 || data_len > AREA - 2048 || !g->sigreturn
        || (ncalls > 1 && (!g->pop_first_arg || !g->pop_second_arg || !g->ret)))
        return -1;
    const struct user_regs_struct *r = &ctx->regs;
    if (r->rsp < 2 * AREA + RED_ZONE + 4096) return -1;

    // Downwards from the red zone: data, the FXSAVE image, the frame, the chain.
    uint64_t top = (r->rsp - RED_ZONE - (uint64_t)slot * AREA) & ~(uint64_t)63;
    uint64_t data_addr = (top - data_len) & ~(uint64_t)15;
    uint64_t fpstate = (data_addr - FXSAVE_SIZE) & ~(uint64_t)63;
    uint64_t frame = ((fpstate - sizeof(struct k_rt_sigframe)) & ~(uint64_t)15) - 8;  // frame % 16 == 8

    // The chain: slot k sits at entry_sp + 8k. calls[0] is entered with rsp = entry_sp
    // (rsp % 16 == 8, as after a call instruction); each later function address must sit
    // at an odd slot index so that its entry rsp is aligned the same way; the trampoline
    // (the frame's pretcode) at an even one, as frame % 16 == 8.
    uint64_t slots[MAX_SLOTS];
    int n = 0;
    for (int i = 1; i < ncalls; i++) {
        uint64_t a0 = calls[i].args[0] == ARCH_ARG_DATA ? data_addr : calls[i].args[0];
        uint64_t a1 = calls[i].args[1] == ARCH_ARG_DATA ? data_addr : calls[i].args[1];
        if (calls[i].nargs >= 1) { slots[n++] = g->pop_first_arg; slots[n++] = a0; }
        if (calls[i].nargs >= 2) { slots[n++] = g->pop_second_arg; slots[n++] = a1; }
        if (n % 2 == 0) slots[n++] = g->ret;
        slots[n++] = calls[i].fn;
    }
    if (n % 2 == 1) slots[n++] = g->ret;
    slots[n++] = g->sigreturn;  // == frame->pretcode
    uint64_t entry_sp = frame - 8 * (uint64_t)(n - 1);
    if ((entry_sp & 15) != 8) return -1;

    uint64_t low = entry_sp;
    size_t len = (size_t)(top - low);
    uint8_t *img = calloc(1, len);
    if (!img) return -1;
    // chain (its last slot is the frame's first word)
    memcpy(img + (entry_sp - low), slots, sizeof(uint64_t) * (size_t)n);
    struct k_rt_sigframe f;
    memset(&f, 0, sizeof f);
    f.pretcode = g->sigreturn;
    fill_sigcontext(&f.uc.uc_mcontext, r, resume);
    f.uc.uc_mcontext.fpstate = ctx->xstate_len >= FXSAVE_SIZE || ctx->have_fp ? fpstate : 0;
    // An invalid mode: rt_sigreturn's restore_altstack gets EINVAL from do_sigaltstack and
    // ignores it, so the thread's alternate signal stack (which we cannot read) stays as is.
    f.uc.uc_stack.ss_flags = 4;
    f.uc.uc_sigmask = sigmask;
    memcpy(img + (frame - low), &f, sizeof f);
    if (f.uc.uc_mcontext.fpstate) {
        uint8_t *fx = img + (fpstate - low);
        if (ctx->xstate_len >= FXSAVE_SIZE) memcpy(fx, ctx->xstate, FXSAVE_SIZE);
        else memcpy(fx, &ctx->fp, sizeof ctx->fp < FXSAVE_SIZE ? sizeof ctx->fp : FXSAVE_SIZE);
        // No FP_XSTATE_MAGIC1: the kernel restores this as a plain FXSAVE image.
        memset(fx + FX_SW_RESERVED, 0, FXSAVE_SIZE - FX_SW_RESERVED);
    }
    if (data_len) memcpy(img + (data_addr - low), data, data_len);

    plan->low = low;
    plan->bytes = img;
    plan->len = len;
    plan->data_addr = data_addr;
    plan->entry_sp = entry_sp;
    plan->return_sp = frame + 8;  // the trampoline runs after the last ret popped pretcode
    return 0;
}

void arch_plan_free(struct arch_plan *plan) {
    free(plan->bytes);
    memset(plan, 0, sizeof *plan);
}

int arch_set_call(pid_t tid, const struct arch_context *ctx, const struct arch_plan *plan,
                  const struct arch_call *first) {
    struct user_regs_struct r = ctx->regs;
    r.rip = first->fn;
    r.rsp = plan->entry_sp;
    uint64_t a0 = first->args[0] == ARCH_ARG_DATA ? plan->data_addr : first->args[0];
    uint64_t a1 = first->args[1] == ARCH_ARG_DATA ? plan->data_addr : first->args[1];
    r.rdi = first->nargs >= 1 ? a0 : 0;
    r.rsi = first->nargs >= 2 ? a1 : 0;
    r.rax = 0;
    r.orig_rax = (unsigned long long)-1;  // no syscall restart on resume
    r.eflags &= ~(1ULL << 10);            // DF clear, as the ABI wants at a call
    return ptrace(PTRACE_SETREGS, tid, 0, &r) == 0 ? 0 : -1;
}

/// Multi-byte nop tails that gas and gcc put before an aligned function.
static int ends_with_padding(const uint8_t *text, size_t at) {
    static const uint8_t *tails[] = {
        (const uint8_t *)"\x90",
        (const uint8_t *)"\x0f\x1f\x00",
        (const uint8_t *)"\x0f\x1f\x40\x00",
        (const uint8_t *)"\x0f\x1f\x44\x00\x00",
        (const uint8_t *)"\x0f\x1f\x80\x00\x00\x00\x00",
        (const uint8_t *)"\x0f\x1f\x84\x00\x00\x00\x00\x00",
        (const uint8_t *)"\xc3",
        (const uint8_t *)"\xcc",
    };
    static const size_t lens[] = { 1, 3, 4, 5, 7, 8, 1, 1 };
    for (size_t i = 0; i < sizeof lens / sizeof lens[0]; i++)
        if (at >= lens[i] && memcmp(text + at - lens[i], tails[i], lens[i]) == 0) return 1;
    return 0;
}

int arch_find_gadgets(const uint8_t *text, size_t len, uint64_t start, uint64_t offset, struct arch_gadgets *g) {
    // __restore_rt of glibc and musl: "mov $15,%rax; syscall" (or "mov $15,%eax"), a real
    // function (the uprobe goes on its first instruction, so it must not be the middle of
    // another one): 16-byte aligned, after alignment padding, and the only one.
    static const uint8_t movq[] = { 0x48, 0xc7, 0xc0, 0x0f, 0x00, 0x00, 0x00, 0x0f, 0x05 };
    static const uint8_t movl[] = { 0xb8, 0x0f, 0x00, 0x00, 0x00, 0x0f, 0x05 };
    uint64_t found = 0;
    int count = 0;
    for (size_t i = 0; i + sizeof movq <= len; i++) {
        int hit = (memcmp(text + i, movq, sizeof movq) == 0) || (memcmp(text + i, movl, sizeof movl) == 0);
        if (!hit || ((start + i) & 15) != 0 || !ends_with_padding(text, i)) continue;
        found = i;
        count++;
    }
    if (count != 1) return -1;
    g->sigreturn = start + found;
    g->sigreturn_offset = offset + found;
    // Return targets only (never probed): any occurrence of the bytes will do.
    const uint8_t *p;
    p = memmem(text, len, "\x5f\xc3", 2);  // pop %rdi; ret
    g->pop_first_arg = p ? start + (uint64_t)(p - text) : 0;
    p = memmem(text, len, "\x5e\xc3", 2);  // pop %rsi; ret
    g->pop_second_arg = p ? start + (uint64_t)(p - text) : 0;
    p = memchr(text, 0xc3, len);           // ret
    g->ret = p ? start + (uint64_t)(p - text) : 0;
    return g->pop_first_arg && g->pop_second_arg && g->ret ? 0 : -1;
}

// x86-64 syscall numbers.
enum { NR_READ = 0, NR_POLL = 7, NR_FUTEX = 202, NR_EPOLL_WAIT = 232, NR_PPOLL = 271,
       NR_EPOLL_PWAIT = 281, NR_EPOLL_PWAIT2 = 441 };

int arch_is_event_wait(long nr) { return nr == NR_EPOLL_WAIT || nr == NR_EPOLL_PWAIT || nr == NR_EPOLL_PWAIT2; }
int arch_is_restartable_wait(long nr) { return nr == NR_FUTEX || nr == NR_READ || nr == NR_POLL || nr == NR_PPOLL; }
int arch_is_futex(long nr) { return nr == NR_FUTEX; }
int arch_is_restart_return(long long ret) { return ret == -K_ERESTARTSYS || ret == -K_ERESTARTNOHAND; }

int arch_at_syscall_return(pid_t pid, const struct arch_context *c) {
    uint8_t insn[SYSCALL_INSN_LEN];
    struct iovec local = { insn, sizeof insn };
    struct iovec remote = { (void *)(uintptr_t)(c->regs.rip - SYSCALL_INSN_LEN), sizeof insn };
    if (process_vm_readv(pid, &local, 1, &remote, 1, 0) != (ssize_t)sizeof insn) return 0;
    return insn[0] == 0x0f && insn[1] == 0x05;
}

#endif  // __x86_64__
