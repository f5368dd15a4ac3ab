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
