// The architecture seam of the ptrace injector: everything that knows registers, stack
// frames, instruction bytes or syscall numbers. arch_x86_64.c implements it; a port to
// another architecture is one more file behind the same declarations (the rest of the
// injector does not look inside struct arch_context).
#ifndef MSM_ARCH_H
#define MSM_ARCH_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#if defined(__x86_64__)
#include <sys/user.h>
/// A thread's whole user state: general registers and the extended (FPU/SSE/AVX) state.
struct arch_context {
    struct user_regs_struct regs;
    uint8_t *xstate;        // NT_X86_XSTATE, xstate_len bytes (malloc'd), or NULL
    size_t xstate_len;
    int have_fp;
    struct user_fpregs_struct fp;
};
#define MSM_ARCH_SUPPORTED 1
#else
struct arch_context { int unused; };
#define MSM_ARCH_SUPPORTED 0
#endif

/// Addresses in the target that a remote call returns through (see arch_find_gadgets).
struct arch_gadgets {
    uint64_t sigreturn;         // the C library's signal-return trampoline (a real function)
    uint64_t sigreturn_offset;  // its file offset in `sigreturn_path` (where the uprobe goes)
    char sigreturn_path[512];   // the object holding it, as the target maps it
    uint64_t sigreturn_map_start, sigreturn_map_end; // its mapping (for /proc/PID/map_files)
    uint64_t pop_first_arg;     // "pop <first argument register>; ret"
    uint64_t pop_second_arg;    // "pop <second argument register>; ret"
    uint64_t ret;               // "ret"
};

/// An argument that stands for the address where the chain's data was placed.
#define ARCH_ARG_DATA ((uint64_t)-2)

/// One function call of a chain: fn(args[0], args[1]).
struct arch_call {
    uint64_t fn;
    uint64_t args[2];
    int nargs;
};

/// A chain laid out in target memory: where the stack pointer starts, what the registers
/// must hold for the first call, and where the return program must see the stack pointer.
struct arch_plan {
    uint64_t low;               // lowest byte written
    uint8_t *bytes;             // the image of [low, low + len), to be written as one block
    size_t len;
    uint64_t data_addr;         // where `data` was placed (e.g. the Python source)
    uint64_t entry_sp;          // stack pointer at the first function's entry
    uint64_t return_sp;         // stack pointer at the sigreturn trampoline's first instruction
};

/// Which state the thread must get back when the chain ends (see arch_restore_point).
enum arch_resume {
    ARCH_RESUME_AS_IS = 0,      // exactly the saved registers (a stop between instructions)
    ARCH_RESUME_RESTART_SYSCALL = 1, // the saved registers, with the interrupted syscall re-executed
};

int arch_save(pid_t tid, struct arch_context *c);
int arch_restore(pid_t tid, const struct arch_context *c);
void arch_context_free(struct arch_context *c);
uint64_t arch_pc(const struct arch_context *c);
uint64_t arch_sp(const struct arch_context *c);
/// The syscall a thread is stopped in (-1: none) and its current return value register.
long arch_syscall_nr(const struct arch_context *c);
long long arch_syscall_ret(const struct arch_context *c);
/// Registers of a thread at any stop, without the extended state.
int arch_get_pc_sp(pid_t tid, uint64_t *pc, uint64_t *sp);

/// Lays out, below `ctx`'s stack pointer (beyond any red zone), at the `slot`-th of two
/// alternating areas: `data` (copied verbatim), an image of the saved state for the kernel's
/// sigreturn (`resume` says how), and a return chain: calls[0] is entered with the stack
/// pointer plan->entry_sp (its arguments in registers, see arch_set_call), each call returns
/// into the next (arguments popped from the chain), and the last returns into the sigreturn
/// trampoline, which restores the saved state exactly, whoever is (or is no longer) tracing
/// the thread. `sigmask` is the thread's blocked signal set. Pure. 0, or -1 (bad input).
int arch_plan_chain(const struct arch_context *ctx, enum arch_resume resume, uint64_t sigmask,
                    const struct arch_gadgets *g, const struct arch_call *calls, int ncalls,
                    const void *data, size_t data_len, int slot, struct arch_plan *plan);
void arch_plan_free(struct arch_plan *plan);

/// Sets the registers of a stopped thread to enter calls[0] of `plan` (from `ctx`).
int arch_set_call(pid_t tid, const struct arch_context *ctx, const struct arch_plan *plan,
                  const struct arch_call *first);

/// Finds the gadgets in the text of the target's C library: `text` is the executable
/// mapping's bytes, mapped at `start` from file offset `offset`. Pure. 0, or -1.
int arch_find_gadgets(const uint8_t *text, size_t len, uint64_t start, uint64_t offset, struct arch_gadgets *g);

/// Is this syscall an event-loop wait that returns EINTR to user space when interrupted by
/// ptrace (then CPython retries through PyEval_SaveThread)?
int arch_is_event_wait(long nr);
/// Is this a blocking wait the kernel restarts transparently (futex, read, poll, ppoll)?
int arch_is_restartable_wait(long nr);
/// The futex syscall (its first argument is the futex address).
int arch_is_futex(long nr);
uint64_t arch_syscall_arg0(const struct arch_context *c);
/// -ERESTARTSYS / -ERESTARTNOHAND: the kernel restarts the wait when the thread resumes.
int arch_is_restart_return(long long ret);
/// The instruction before the stop is the syscall instruction (its restart point).
int arch_at_syscall_return(pid_t pid, const struct arch_context *c);

#endif
