/*
 * xstate shim: lets User-Mode Linux kernels that size the host's extended
 * FPU state at compile time (Linux 6.1 and earlier) run on hosts whose
 * XSAVE area is larger (AVX-512, AMX).
 *
 * Such a kernel saves and restores a guest thread's FPU state with
 * PTRACE_GETREGSET/PTRACE_SETREGSET(NT_X86_XSTATE) and a fixed, too small
 * buffer. The host accepts a short GETREGSET but refuses a SETREGSET that is
 * not exactly its full XSAVE size (EFAULT), and the kernel then kills the
 * first guest process: "userspace - ptrace set fp regs failed, errno = 14".
 *
 * Loaded with LD_PRELOAD into the kernel process, this library interposes
 * ptrace(3) for those two requests only. It keeps a full-size copy of each
 * saved state, keyed by the kernel's buffer address, hands the kernel the
 * prefix it asked for, and restores the full state with the kernel's
 * (possibly changed) prefix laid over it. Requests whose size already
 * matches the host pass straight through.
 *
 * It also gives the kernel a fixed memory layout. UML sizes its physical
 * memory from mem= plus the gap the host's address randomization leaves
 * between the binary and its heap, and pays for that gap's page structures
 * out of mem=: with randomization a mem=64M guest gets anywhere from about
 * 36 to 53 MB, a different amount at each boot, and now and then too little
 * to boot (a failed root mount, ENOMEM). So, unless UMLKIT_KERNEL_ASLR=1,
 * the library's constructor turns on ADDR_NO_RANDOMIZE and executes the
 * kernel again, once, the way `setarch -R` would have started it.
 *
 * Build: make shim (the result is embedded in the umlkit binary).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <string.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/personality.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#define REQ_GETREGSET 0x4204
#define REQ_SETREGSET 0x4205
#define NOTE_XSTATE 0x202
#define PROBE_SIZE (64 * 1024)
#define SLOTS 1024

struct slot { void *key; unsigned char *buf; };
static struct slot slots[SLOTS];
static size_t host_size;
static unsigned char *scratch;

static long sys_ptrace(long req, long pid, void *addr, void *data)
{
	return syscall(SYS_ptrace, req, pid, addr, data);
}

static void *grab(size_t n)
{
	void *p = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	return p == MAP_FAILED ? NULL : p;
}

static int full_get(long pid, unsigned char *buf, size_t cap)
{
	struct iovec v = { buf, cap };
	if (sys_ptrace(REQ_GETREGSET, pid, (void *)NOTE_XSTATE, &v) < 0)
		return -1;
	return (int)v.iov_len;
}

static int learn(long pid)
{
	if (host_size)
		return 0;
	unsigned char *probe = grab(PROBE_SIZE);
	if (!probe)
		return -1;
	int n = full_get(pid, probe, PROBE_SIZE);
	munmap(probe, PROBE_SIZE);
	if (n <= 0)
		return -1;
	host_size = (size_t)n;
	scratch = grab(host_size);
	return scratch ? 0 : -1;
}

static struct slot *lookup(void *key, int create)
{
	size_t h = ((size_t)key >> 4) % SLOTS;
	for (size_t i = 0; i < SLOTS; i++) {
		struct slot *s = &slots[(h + i) % SLOTS];
		if (s->key == key)
			return s;
		if (s->key == NULL) {
			if (!create)
				return NULL;
			s->buf = grab(host_size);
			if (!s->buf)
				return NULL;
			s->key = key;
			return s;
		}
	}
	return NULL;
}

static long regset(long req, long pid, struct iovec *iov)
{
	size_t n = iov->iov_len;
	if (learn(pid) < 0 || n >= host_size)
		return sys_ptrace(req, pid, (void *)NOTE_XSTATE, iov);
	struct slot *s = lookup(iov->iov_base, req == REQ_GETREGSET);
	if (req == REQ_GETREGSET) {
		unsigned char *dst = s ? s->buf : scratch;
		if (full_get(pid, dst, host_size) < 0)
			return -1;
		memcpy(iov->iov_base, dst, n);
		return 0;
	}
	unsigned char *base = s ? s->buf : scratch;
	if (!s && full_get(pid, scratch, host_size) < 0)
		return -1;
	memcpy(base, iov->iov_base, n);
	struct iovec full = { base, host_size };
	return sys_ptrace(REQ_SETREGSET, pid, (void *)NOTE_XSTATE, &full);
}

long ptrace(int request, ...)
{
	va_list ap;
	va_start(ap, request);
	long pid = va_arg(ap, int);
	void *addr = va_arg(ap, void *);
	void *data = va_arg(ap, void *);
	va_end(ap);
	if ((request == REQ_GETREGSET || request == REQ_SETREGSET) &&
	    (long)addr == NOTE_XSTATE && data != NULL)
		return regset(request, pid, data);
	static long (*next)(int, ...);
	if (!next)
		next = (long (*)(int, ...))dlsym(RTLD_NEXT, "ptrace");
	return next(request, pid, addr, data);
}

__attribute__((constructor))
static void fixed_layout(int argc, char **argv, char **envp)
{
	(void)argc;
	const char *keep = getenv("UMLKIT_KERNEL_ASLR");
	if (keep && keep[0] == '1')
		return;
	int p = personality(0xffffffff);
	if (p == -1 || (p & ADDR_NO_RANDOMIZE))
		return;
	if (personality((unsigned long)p | ADDR_NO_RANDOMIZE) == -1)
		return;
	execve("/proc/self/exe", argv, envp);
	/* The exec failed: carry on with the randomized layout. */
	personality((unsigned long)p);
}
