/*
 * umlfpu: an LD_PRELOAD shim for the host side of user-mode Linux 6.1.
 *
 * UML saves and restores a guest thread's FPU/vector state with
 * PTRACE_GETREGSET/PTRACE_SETREGSET(NT_X86_XSTATE) on a fixed 832-byte
 * buffer (legacy area, XSAVE header, AVX). On hosts whose XSAVE area is
 * larger (AVX-512, AMX) the host kernel refuses a SETREGSET that is not
 * exactly its full XSAVE size with EFAULT, and UML kills the guest's init
 * ("ptrace set fp regs failed, errno = 14").
 *
 * The shim makes both calls use the host's full size. A GETREGSET keeps the
 * full state, keyed by UML's per-thread buffer address, and hands UML its
 * 832 bytes; a SETREGSET rebuilds the full state from UML's bytes plus the
 * saved rest of the same guest thread. The guest kernel is untouched: only
 * the size of a host ptrace buffer changes. It is test infrastructure, not
 * part of snapctl (which is pure Go, CGO_ENABLED=0).
 *
 * The shim also keeps UML's idle loop from wedging. UML 6.1 drives the
 * guest's clock event device with one host POSIX timer (one-shot, SIGALRM).
 * Its idle loop (os_idle_sleep) sleeps in sigsuspend only while that timer
 * is armed; if it reads the timer as disarmed it returns at once, and the
 * guest re-arms the timer from its timer interrupt. Now and then a SIGALRM
 * reaches UML's host handler but no timer interrupt re-arms the timer
 * afterwards (traced on this host: the last expiry's signal was taken, no
 * timer_settime followed). From then on the guest waits for an event its
 * host timer will never deliver, and the idle loop spins at 100 % CPU
 * reading a disarmed timer: no guest timer fires again. So when
 * timer_gettime finds the timer disarmed twice in a row with no
 * timer_settime in between, the shim arms it for one millisecond. The
 * SIGALRM that follows runs the guest's timer interrupt, which reprograms
 * the timer for the guest's real next event. A first disarmed reading is
 * passed through as it is: that is the ordinary case of an expiry whose
 * interrupt is already pending inside UML and runs as soon as the loop
 * returns. A guest with no timer pending at all gets a spurious tick every
 * millisecond instead of a busy loop.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define NT_X86_XSTATE 0x202
#define SLOTS 8192

struct slot {
	void *key;            /* UML's buffer for one guest thread */
	unsigned char *state; /* that thread's full XSAVE state */
};

static struct slot slots[SLOTS];
static size_t full_size;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;

static long sys_ptrace(long req, long pid, void *addr, void *data)
{
	return syscall(SYS_ptrace, req, pid, addr, data);
}

/* host_size asks the host kernel how large its XSAVE regset is. */
static size_t host_size(long pid)
{
	static unsigned char probe[1 << 16];
	struct iovec io = { probe, sizeof probe };

	if (full_size == 0 && sys_ptrace(PTRACE_GETREGSET, pid, (void *)NT_X86_XSTATE, &io) == 0)
		full_size = io.iov_len;
	return full_size;
}

static struct slot *lookup(void *key, int create)
{
	size_t h = ((uintptr_t)key >> 4) % SLOTS;

	for (size_t i = 0; i < SLOTS; i++) {
		struct slot *s = &slots[(h + i) % SLOTS];
		if (s->key == key)
			return s;
		if (s->key == NULL) {
			if (!create)
				return NULL;
			s->key = key;
			return s;
		}
	}
	return NULL;
}

static long xstate(long req, pid_t pid, void *addr, struct iovec *io, size_t n)
{
	unsigned char *buf = malloc(n);
	struct iovec fio = { buf, n };
	struct slot *s;
	long r;

	if (buf == NULL)
		return sys_ptrace(req, pid, addr, io);
	if (req == PTRACE_GETREGSET) {
		r = sys_ptrace(PTRACE_GETREGSET, pid, addr, &fio);
		if (r == 0) {
			memcpy(io->iov_base, buf, io->iov_len);
			if ((s = lookup(io->iov_base, 1)) != NULL) {
				if (s->state == NULL)
					s->state = malloc(n);
				if (s->state != NULL)
					memcpy(s->state, buf, n);
			}
		}
	} else {
		s = lookup(io->iov_base, 0);
		if (s != NULL && s->state != NULL)
			memcpy(buf, s->state, n);
		else if ((r = sys_ptrace(PTRACE_GETREGSET, pid, addr, &fio)) != 0)
			goto out;
		memcpy(buf, io->iov_base, io->iov_len);
		r = sys_ptrace(PTRACE_SETREGSET, pid, addr, &fio);
	}
out:
	free(buf);
	return r;
}

long ptrace(enum __ptrace_request req, ...)
{
	typedef long (*ptrace_fn)(enum __ptrace_request, ...);
	static ptrace_fn next;
	va_list ap;
	pid_t pid;
	void *addr, *data;

	va_start(ap, req);
	pid = va_arg(ap, pid_t);
	addr = va_arg(ap, void *);
	data = va_arg(ap, void *);
	va_end(ap);

	if ((req == PTRACE_GETREGSET || req == PTRACE_SETREGSET) && (uintptr_t)addr == NT_X86_XSTATE) {
		struct iovec *io = data;
		pthread_mutex_lock(&mu);
		size_t n = host_size(pid);
		if (n > 0 && io->iov_len < n) {
			long r = xstate(req, pid, addr, io, n);
			pthread_mutex_unlock(&mu);
			return r;
		}
		pthread_mutex_unlock(&mu);
	}
	if (next == NULL)
		next = (ptrace_fn)dlsym(RTLD_NEXT, "ptrace");
	return next(req, pid, addr, data);
}

/* The idle backstop (see the top of the file). os_idle_sleep is UML's only
 * caller of timer_gettime and runs on its main thread only, as do its
 * timer_settime calls, so a plain counter will do. */
typedef int (*settime_fn)(timer_t, int, const struct itimerspec *, struct itimerspec *);
typedef int (*gettime_fn)(timer_t, struct itimerspec *);
static settime_fn next_settime;
static gettime_fn next_gettime;
static int disarmed_reads; /* disarmed readings since UML last armed the timer */

static void timer_syms(void)
{
	if (next_settime == NULL)
		next_settime = (settime_fn)dlsym(RTLD_NEXT, "timer_settime");
	if (next_gettime == NULL)
		next_gettime = (gettime_fn)dlsym(RTLD_NEXT, "timer_gettime");
}

int timer_settime(timer_t id, int flags, const struct itimerspec *val, struct itimerspec *old)
{
	timer_syms();
	disarmed_reads = 0;
	return next_settime(id, flags, val, old);
}

int timer_gettime(timer_t id, struct itimerspec *cur)
{
	static const struct itimerspec backstop = { .it_value = { 0, 1000000 } };
	int r;

	timer_syms();
	r = next_gettime(id, cur);
	if (r != 0 || cur->it_value.tv_sec != 0 || cur->it_value.tv_nsec != 0) {
		disarmed_reads = 0;
		return r;
	}
	if (++disarmed_reads < 2)
		return r;
	disarmed_reads = 0;
	if (next_settime(id, 0, &backstop, NULL) != 0)
		return r;
	return next_gettime(id, cur);
}
