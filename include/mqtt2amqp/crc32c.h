/* crc32c.h - CRC-32C (Castagnoli), the checksum of spool records. */
#ifndef MQTT2AMQP_CRC32C_H
#define MQTT2AMQP_CRC32C_H

#include <stddef.h>
#include <stdint.h>

/* Extends crc (start with 0) over data[0..len). */
uint32_t m2a_crc32c(uint32_t crc, const void *data, size_t len);

/* The same without the CPU's crc32 instruction (tests compare the two). */
uint32_t m2a_crc32c_portable(uint32_t crc, const void *data, size_t len);

#endif
