#include "ledger/arena.h"

#include <assert.h>
#include <stdalign.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

struct tally_arena_chunk {
	struct tally_arena_chunk *next;
	size_t size_bytes;   /* usable bytes after the header */
	size_t used_bytes;
	alignas(max_align_t) unsigned char data[];
};

#define ARENA_ALIGN (alignof(max_align_t))

static void *arenaPbAlloc(void *ctx, size_t size)
{
	return tally_arena_alloc(ctx, size);
}

static void arenaPbFree(void *ctx, void *ptr)
{
	(void)ctx;
	(void)ptr; /* released all at once by tally_arena_reset */
}

void tally_arena_init(struct tally_arena *a, size_t chunk_bytes, size_t limit_bytes)
{
	assert(a != NULL);
	assert(chunk_bytes >= 256);
	memset(a, 0, sizeof(*a));
	a->chunk_bytes = chunk_bytes;
	a->limit_bytes = limit_bytes;
	a->pb.alloc = arenaPbAlloc;
	a->pb.free = arenaPbFree;
	a->pb.allocator_data = a;
}

/* Takes a chunk able to hold `size` bytes: a spare one if big enough, else a new one. */
static struct tally_arena_chunk *arenaChunk(struct tally_arena *a, size_t size)
{
	struct tally_arena_chunk **p = &a->spare;
	while (*p != NULL) {
		if ((*p)->size_bytes >= size) {
			struct tally_arena_chunk *c = *p;
			*p = c->next;
			c->used_bytes = 0;
			return c;
		}
		p = &(*p)->next;
	}
	size_t want = size > a->chunk_bytes ? size : a->chunk_bytes;
	struct tally_arena_chunk *c = malloc(sizeof(*c) + want);
	if (c == NULL)
		return NULL;
	c->size_bytes = want;
	c->used_bytes = 0;
	c->next = NULL;
	return c;
}

void *tally_arena_alloc(struct tally_arena *a, size_t size)
{
	assert(a != NULL);
	assert(a->chunk_bytes > 0);
	if (size == 0)
		size = 1;
	if (size > SIZE_MAX / 2)
		return NULL;
	size_t rounded = (size + ARENA_ALIGN - 1) & ~(ARENA_ALIGN - 1);
	if (a->limit_bytes != 0 && a->used_bytes + rounded > a->limit_bytes)
		return NULL;
	struct tally_arena_chunk *c = a->head;
	if (c == NULL || c->size_bytes - c->used_bytes < rounded) {
		c = arenaChunk(a, rounded);
		if (c == NULL)
			return NULL;
		c->next = a->head;
		a->head = c;
	}
	void *p = c->data + c->used_bytes;
	c->used_bytes += rounded;
	a->used_bytes += rounded;
	return p;
}

void *tally_arena_zalloc(struct tally_arena *a, size_t size)
{
	void *p = tally_arena_alloc(a, size);
	if (p != NULL)
		memset(p, 0, size);
	return p;
}

char *tally_arena_strndup(struct tally_arena *a, const char *s, size_t len)
{
	assert(a != NULL);
	assert(s != NULL || len == 0);
	char *p = tally_arena_alloc(a, len + 1);
	if (p == NULL)
		return NULL;
	if (len > 0)
		memcpy(p, s, len);
	p[len] = '\0';
	return p;
}

char *tally_arena_strdup(struct tally_arena *a, const char *s)
{
	assert(s != NULL);
	return tally_arena_strndup(a, s, strlen(s));
}

void tally_arena_reset(struct tally_arena *a)
{
	assert(a != NULL);
	while (a->head != NULL) {
		struct tally_arena_chunk *c = a->head;
		a->head = c->next;
		c->used_bytes = 0;
		c->next = a->spare;
		a->spare = c;
	}
	a->used_bytes = 0;
}

void tally_arena_free(struct tally_arena *a)
{
	assert(a != NULL);
	tally_arena_reset(a);
	while (a->spare != NULL) {
		struct tally_arena_chunk *c = a->spare;
		a->spare = c->next;
		free(c);
	}
}

ProtobufCAllocator *tally_arena_protobuf(struct tally_arena *a)
{
	assert(a != NULL);
	assert(a->pb.allocator_data == a);
	return &a->pb;
}
