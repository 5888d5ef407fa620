/* fuzz.h - what the libFuzzer targets share: the entry point's prototype and
 * an oracle check that turns a broken property into a crash libFuzzer
 * records (a plain assert() would vanish under NDEBUG).
 *
 * Single-threaded: libFuzzer calls each target from one thread. */
#ifndef MQTT2AMQP_FUZZ_H
#define MQTT2AMQP_FUZZ_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* A property the code under test promises does not hold for this input. */
#define FUZZ_CHECK(cond, ...)                                                                      \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: property failed: %s: ", __FILE__, __LINE__, #cond);            \
            fprintf(stderr, __VA_ARGS__);                                                          \
            fputc('\n', stderr);                                                                   \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

#endif
