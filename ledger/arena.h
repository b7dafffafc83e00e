/*
 * A bump allocator for the apply path and for query answers.
 *
 * Memory is taken from chunks that are kept across resets, so once an arena has
 * grown to the size a batch needs, applying further batches allocates nothing.
 * Lifecycle: tally_arena_init → tally_arena_alloc* → tally_arena_reset (repeat)
 * → tally_arena_free. Protobuf-c messages decoded or built through
 * tally_arena_protobuf() live until the next reset; never free them one by one.
 */
#ifndef TALLY_ARENA_H
#define TALLY_ARENA_H

#include <stddef.h>
#include <protobuf-c/protobuf-c.h>

struct tally_arena_chunk;

struct tally_arena {
	struct tally_arena_chunk *head;    /* chunk being filled */
	struct tally_arena_chunk *spare;   /* emptied chunks kept for reuse */
	size_t chunk_bytes;                /* minimum size of a new chunk */
	size_t used_bytes;                 /* handed out since the last reset */
	size_t limit_bytes;                /* 0 = no limit; past it allocations fail */
	ProtobufCAllocator pb;             /* protobuf-c view of this arena */
};

/* Prepares an empty arena. `chunk_bytes` is the granularity (e.g. 64 KiB);
 * `limit_bytes` bounds what one cycle may use (0 = unbounded). No memory is taken yet. */
void tally_arena_init(struct tally_arena *a, size_t chunk_bytes, size_t limit_bytes);

/* Returns `size` bytes aligned for any scalar type, or NULL when memory or the limit
 * runs out. The memory is uninitialised and stays valid until reset or free. */
void *tally_arena_alloc(struct tally_arena *a, size_t size);

/* As tally_arena_alloc, zero-filled. */
void *tally_arena_zalloc(struct tally_arena *a, size_t size);

/* Copies a NUL-terminated string (or `len` bytes plus a NUL) into the arena. */
char *tally_arena_strdup(struct tally_arena *a, const char *s);
char *tally_arena_strndup(struct tally_arena *a, const char *s, size_t len);

/* Forgets every allocation; the chunks are kept for reuse. */
void tally_arena_reset(struct tally_arena *a);

/* Returns every chunk to the system. The arena may be initialised again. */
void tally_arena_free(struct tally_arena *a);

/* The protobuf-c allocator that allocates from `a` and frees nothing. */
ProtobufCAllocator *tally_arena_protobuf(struct tally_arena *a);

#endif /* TALLY_ARENA_H */
