/*
 * rpc/pbjson — any protobuf-c message as JSON, by its descriptor (rpc/pbjson.h).
 */
#include "rpc/pbjson.h"

#include <inttypes.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include <openssl/evp.h>

#include "rpc/json.h"

/* Bytes encoded at a time: a multiple of 3, so the pieces join into one base64 text. */
#define PBJSON_BASE64_CHUNK 768

static void write_base64(FILE *f, const ProtobufCBinaryData *b)
{
	unsigned char out[PBJSON_BASE64_CHUNK / 3 * 4 + 1];
	fputc('"', f);
	for (size_t at = 0; at < b->len; at += PBJSON_BASE64_CHUNK) {
		size_t n = b->len - at < PBJSON_BASE64_CHUNK ? b->len - at : PBJSON_BASE64_CHUNK;
		int w = EVP_EncodeBlock(out, b->data + at, (int)n);
		fwrite(out, 1, (size_t)w, f);
	}
	fputc('"', f);
}

static void write_enum(FILE *f, const ProtobufCEnumDescriptor *d, int v)
{
	const ProtobufCEnumValue *ev = protobuf_c_enum_descriptor_get_value(d, v);
	if (ev != NULL)
		tally_json_write_str(f, ev->name);
	else
		fprintf(f, "%d", v); /* a number this build does not know: as proto3 says */
}

/* One value of field fd stored at p. */
static void write_value(FILE *f, const ProtobufCFieldDescriptor *fd, const void *p)
{
	switch (fd->type) {
	case PROTOBUF_C_TYPE_INT32:
	case PROTOBUF_C_TYPE_SINT32:
	case PROTOBUF_C_TYPE_SFIXED32:
		fprintf(f, "%" PRId32, *(const int32_t *)p);
		break;
	case PROTOBUF_C_TYPE_UINT32:
	case PROTOBUF_C_TYPE_FIXED32:
		fprintf(f, "%" PRIu32, *(const uint32_t *)p);
		break;
	case PROTOBUF_C_TYPE_INT64:
	case PROTOBUF_C_TYPE_SINT64:
	case PROTOBUF_C_TYPE_SFIXED64:
		fprintf(f, "\"%" PRId64 "\"", *(const int64_t *)p);
		break;
	case PROTOBUF_C_TYPE_UINT64:
	case PROTOBUF_C_TYPE_FIXED64:
		fprintf(f, "\"%" PRIu64 "\"", *(const uint64_t *)p);
		break;
	case PROTOBUF_C_TYPE_BOOL:
		fputs(*(const protobuf_c_boolean *)p ? "true" : "false", f);
		break;
	case PROTOBUF_C_TYPE_ENUM:
		write_enum(f, fd->descriptor, *(const int *)p);
		break;
	case PROTOBUF_C_TYPE_STRING:
		tally_json_write_str(f, *(char *const *)p != NULL ? *(char *const *)p : "");
		break;
	case PROTOBUF_C_TYPE_BYTES:
		write_base64(f, p);
		break;
	case PROTOBUF_C_TYPE_MESSAGE:
		tally_pbjson_write(f, *(ProtobufCMessage *const *)p);
		break;
	default: /* float, double: none in the schema */
		fputs("null", f);
		break;
	}
}

static size_t value_size(ProtobufCType t)
{
	switch (t) {
	case PROTOBUF_C_TYPE_INT32:
	case PROTOBUF_C_TYPE_SINT32:
	case PROTOBUF_C_TYPE_SFIXED32:
	case PROTOBUF_C_TYPE_UINT32:
	case PROTOBUF_C_TYPE_FIXED32:
	case PROTOBUF_C_TYPE_FLOAT:
		return 4;
	case PROTOBUF_C_TYPE_INT64:
	case PROTOBUF_C_TYPE_SINT64:
	case PROTOBUF_C_TYPE_SFIXED64:
	case PROTOBUF_C_TYPE_UINT64:
	case PROTOBUF_C_TYPE_FIXED64:
	case PROTOBUF_C_TYPE_DOUBLE:
		return 8;
	case PROTOBUF_C_TYPE_BOOL:
		return sizeof(protobuf_c_boolean);
	case PROTOBUF_C_TYPE_ENUM:
		return sizeof(int);
	case PROTOBUF_C_TYPE_BYTES:
		return sizeof(ProtobufCBinaryData);
	default: /* string, message: pointers */
		return sizeof(void *);
	}
}

/* Whether a singular value at p differs from its type's default. */
static bool value_set(ProtobufCType t, const void *p)
{
	static const uint8_t zero[8];
	switch (t) {
	case PROTOBUF_C_TYPE_STRING: {
		const char *s = *(char *const *)p;
		return s != NULL && s[0] != '\0';
	}
	case PROTOBUF_C_TYPE_BYTES:
		return ((const ProtobufCBinaryData *)p)->len > 0;
	case PROTOBUF_C_TYPE_MESSAGE:
		return *(void *const *)p != NULL;
	default:
		return memcmp(p, zero, value_size(t)) != 0;
	}
}

/* Whether field fd of message m is written (and, for repeated, how many values). */
static bool field_present(const ProtobufCMessage *m, const ProtobufCFieldDescriptor *fd,
			  size_t *count)
{
	const char *base = (const char *)m;
	const void *p = base + fd->offset;
	*count = 1;
	if (fd->label == PROTOBUF_C_LABEL_REPEATED) {
		*count = *(const size_t *)(base + fd->quantifier_offset);
		return *count > 0;
	}
	if (fd->flags & PROTOBUF_C_FIELD_FLAG_ONEOF)
		return *(const uint32_t *)(base + fd->quantifier_offset) == fd->id;
	if (fd->label == PROTOBUF_C_LABEL_OPTIONAL && fd->quantifier_offset != 0 &&
	    fd->type != PROTOBUF_C_TYPE_STRING && fd->type != PROTOBUF_C_TYPE_MESSAGE)
		return *(const protobuf_c_boolean *)(base + fd->quantifier_offset);
	return fd->label == PROTOBUF_C_LABEL_REQUIRED || value_set(fd->type, p);
}

void tally_pbjson_write(FILE *f, const ProtobufCMessage *m)
{
	const ProtobufCMessageDescriptor *d = m->descriptor;
	bool first = true;
	fputc('{', f);
	for (unsigned i = 0; i < d->n_fields; i++) {
		const ProtobufCFieldDescriptor *fd = &d->fields[i];
		size_t n;
		if (!field_present(m, fd, &n))
			continue;
		fputs(first ? "" : ",", f);
		first = false;
		tally_json_write_str(f, fd->name);
		fputc(':', f);
		const char *p = (const char *)m + fd->offset;
		if (fd->label != PROTOBUF_C_LABEL_REPEATED) {
			write_value(f, fd, p);
			continue;
		}
		const char *arr = *(const char *const *)p;
		fputc('[', f);
		for (size_t k = 0; k < n; k++) {
			fputs(k > 0 ? "," : "", f);
			write_value(f, fd, arr + k * value_size(fd->type));
		}
		fputc(']', f);
	}
	fputc('}', f);
}
