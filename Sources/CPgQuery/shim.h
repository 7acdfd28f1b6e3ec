#ifndef CUSTOS_CPGQUERY_SHIM_H
#define CUSTOS_CPGQUERY_SHIM_H

#include <pg_query.h>
#include <stddef.h>
#include <stdint.h>

/*
 * Bytes of stack left below the caller's frame on the current thread, or 0 when unknown.
 * libpg_query recurses once per nesting level of a statement, so CustosSQL checks the room left
 * before handing it a large statement (see LargeStack.swift). pthread_getattr_np is a GNU
 * extension that Swift's Glibc module does not expose, hence this helper.
 */
#if defined(__linux__) && defined(__GLIBC__)
#include <pthread.h>
extern int pthread_getattr_np(pthread_t thread, pthread_attr_t *attr);

static inline size_t custos_stack_remaining(void) {
    pthread_attr_t attributes;
    if (pthread_getattr_np(pthread_self(), &attributes) != 0) return 0;
    void *low = NULL;
    size_t size = 0;
    int known = pthread_attr_getstack(&attributes, &low, &size) == 0;
    pthread_attr_destroy(&attributes);
    if (!known) return 0;
    char here;
    uintptr_t current = (uintptr_t)&here;
    uintptr_t bottom = (uintptr_t)low;
    return current > bottom ? (size_t)(current - bottom) : 0;
}
#else
static inline size_t custos_stack_remaining(void) { return 0; }
#endif

#endif
