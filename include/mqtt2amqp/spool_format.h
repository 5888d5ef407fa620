/* spool_format.h - the spool's files on disk, and nothing else: the record
 * layout and its CRC, the checkpoint, the spool id and the file names.
 * The one copy of the layout, shared by the writer and reader (spool.c),
 * recovery (spool_recover.c), the unit tests and the fuzzers. Pure
 * functions over buffers the caller owns: no I/O, no state, any thread.
 *
 * All integers little-endian (core/bytes.h):
 *   record     = magic u32 | len u32 | crc u32 | seq u64 | payload[len]
 *                crc = CRC32C over len, seq and payload, so a damaged length
 *                cannot pass for a record; len <= M2A_SPOOL_MAX_PAYLOAD, so
 *                a damaged length never makes a reader allocate gigabytes.
 *   NNNN.seg   = records, named %020llu by the first sequence number the
 *                segment may hold: every record in it has seq >= its name
 *                and < the next segment's name.
 *   checkpoint = magic u32 | version u32 | committed seq u64 | crc u32
 *                (crc = CRC32C of the first 16 bytes).
 *   spool.id   = 16 lowercase hex digits and a newline.
 *   lock       = empty; flock()ed for as long as the spool is open.
 *   quarantine-NNNN.bad = damaged bytes kept for a human, named %020llu by
 *                the first sequence number they should have held.
 *   NAME.tmp   = a checkpoint or spool.id being written (then renamed). */
#ifndef MQTT2AMQP_SPOOL_FORMAT_H
#define MQTT2AMQP_SPOOL_FORMAT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Largest encoded envelope one record holds: the largest payload an MQTT
 * packet can carry (256 MiB) with its routing data (topic, names, headers),
 * so that mqtt.max_message_bytes alone limits what is bridged (it was 16 MiB
 * on the whole record, which refused a payload of exactly 16 MiB). It bounds
 * what a damaged length field can make recovery or the reader allocate; the
 * reader never reads past the published end of a segment either. */
#define M2A_SPOOL_MAX_PAYLOAD (272u * 1024u * 1024u)

#define M2A_SPOOL_RECORD_MAGIC       0x5251324du /* "M2QR" on disk */
#define M2A_SPOOL_RECORD_HEADER      20
#define M2A_SPOOL_CHECKPOINT_MAGIC   0x4b43324du /* "M2CK" on disk */
#define M2A_SPOOL_CHECKPOINT_VERSION 1u
#define M2A_SPOOL_CHECKPOINT_SIZE    20
#define M2A_SPOOL_ID_LEN             16
#define M2A_SPOOL_NAME_MAX           48 /* holds every file name below, with ".tmp" */

#define M2A_SPOOL_CHECKPOINT_FILE "checkpoint"
#define M2A_SPOOL_ID_FILE         "spool.id"
#define M2A_SPOOL_LOCK_FILE       "lock"

enum m2a_spool_format_check {
    M2A_SPOOL_RECORD_OK,
    M2A_SPOOL_RECORD_BAD,   /* not a valid record here */
    M2A_SPOOL_RECORD_SHORT, /* more bytes are needed to decide */
};

/* Fills the header of the record at rec (magic, len, seq, crc); its
 * payload_len bytes of payload must already follow at rec +
 * M2A_SPOOL_RECORD_HEADER (the CRC covers them). */
void m2a_spool_format_record_header(unsigned char *rec, size_t payload_len, uint64_t seq);

/* The same for a record whose payload is head_len bytes at rec +
 * M2A_SPOOL_RECORD_HEADER followed by tail_len bytes at tail (written
 * after them, from where they are). */
void m2a_spool_format_record_header_tail(unsigned char *rec, size_t head_len, const void *tail,
                                         size_t tail_len, uint64_t seq);
/* Checks the record that would start at p, of which avail bytes are at
 * hand. Valid only with lo < seq < hi. On OK sets *seq and *reclen (header
 * included); on SHORT sets *reclen to the bytes needed to decide. */
enum m2a_spool_format_check m2a_spool_format_record_parse(const unsigned char *p, size_t avail,
                                                          uint64_t lo, uint64_t hi, uint64_t *seq,
                                                          size_t *reclen);

/* The checks of record_parse that need the header alone (magic, length
 * limit, lo < seq < hi): OK with *seq and *reclen (header included) when
 * they pass, though the CRC is not checked yet; SHORT (with *reclen) when
 * fewer than a header's bytes are at hand. For a reader that puts a large
 * record's payload elsewhere and checks its CRC there, in pieces: */
enum m2a_spool_format_check m2a_spool_format_record_head(const unsigned char *p, size_t avail,
                                                         uint64_t lo, uint64_t hi, uint64_t *seq,
                                                         size_t *reclen);
/* The CRC over the header's fields (len, seq); continue it with
 * m2a_crc32c over the payload, in order, and compare with crc_stored. */
uint32_t m2a_spool_format_record_crc_start(const unsigned char *hdr);
uint32_t m2a_spool_format_record_crc_stored(const unsigned char *hdr);

/* Offset of the first record magic in p[from..size), or size if none. */
size_t m2a_spool_format_magic_find(const unsigned char *p, size_t size, size_t from);

/* Offset of the next valid record (lo < seq < hi) in p[from..size), or
 * size if none: where reading resumes after damaged bytes. */
size_t m2a_spool_format_record_find(const unsigned char *p, size_t size, size_t from, uint64_t lo,
                                    uint64_t hi);

/* The checkpoint file's bytes (M2A_SPOOL_CHECKPOINT_SIZE) for seq. */
void m2a_spool_format_checkpoint_encode(unsigned char *out, uint64_t seq);

/* True, with *seq, when the len bytes at b are a valid checkpoint. */
bool m2a_spool_format_checkpoint_decode(const unsigned char *b, size_t len, uint64_t *seq);

/* The spool.id file's bytes (M2A_SPOOL_ID_LEN + 1) for a 16-digit id. */
void m2a_spool_format_id_encode(char *out, const char *id);

/* True, with the id and its terminating NUL in out (M2A_SPOOL_ID_LEN + 1
 * bytes), when the len bytes at b are a valid spool.id (newline optional). */
bool m2a_spool_format_id_decode(const char *b, size_t len, char *out);

/* File names into buf (M2A_SPOOL_NAME_MAX bytes is always enough). */
void m2a_spool_format_segment_name(char *buf, size_t len, uint64_t first);
void m2a_spool_format_quarantine_name(char *buf, size_t len, uint64_t seq);

/* True, with the segment's first sequence number (never 0), when name is
 * a segment file's name. */
bool m2a_spool_format_segment_parse(const char *name, uint64_t *first);

#endif
