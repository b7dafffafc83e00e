/*
 * tally-cdc: one journal entry as a message (cdc.h).
 */
#include <ctype.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rpc/checkpoint.h"
#include "rpc/pbjson.h"
#include "tools/cdc/cdc.h"

const char CDC_CONTENT_PROTOBUF[] = "application/x-protobuf; proto=tally.v1.StoredEntry";
const char CDC_CONTENT_JSON[] = "application/json";

const char *cdc_kind_name(Tally__V1__EntryKind k)
{
	const ProtobufCEnumValue *v =
		protobuf_c_enum_descriptor_get_value(&tally__v1__entry_kind__descriptor, (int)k);
	return v != NULL ? v->name : "UNKNOWN";
}

/* {"seq":"…","raft_index":"…","raft_term":"…","leaf":"<hex>","entry":{…}} */
static int encode_json(const Tally__V1__StoredEntry *s, const Tally__V1__Entry *e,
		       struct cdc_message *m)
{
	uint8_t leaf[TALLY_HASH_BYTES];
	char hex[2 * TALLY_HASH_BYTES + 1];
	tally_merkle_leaf_hash(s->entry.data, s->entry.len, leaf);
	tally_hex_encode(leaf, sizeof(leaf), hex);
	char *text = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&text, &len);
	if (f == NULL)
		return -1;
	fprintf(f, "{\"seq\":\"%" PRIu64 "\",\"raft_index\":\"%" PRIu64 "\",\"raft_term\":\"%" PRIu64
		"\",\"leaf\":\"%s\",\"entry\":", s->seq, s->raft_index, s->raft_term, hex);
	tally_pbjson_write(f, &e->base);
	fputc('}', f);
	if (fclose(f) != 0) {
		free(text);
		return -1;
	}
	m->body = text;
	m->len = len;
	return 0;
}

static int encode_protobuf(const Tally__V1__StoredEntry *s, struct cdc_message *m)
{
	m->len = tally__v1__stored_entry__get_packed_size(s);
	m->body = malloc(m->len > 0 ? m->len : 1);
	if (m->body == NULL)
		return -1;
	tally__v1__stored_entry__pack(s, m->body);
	return 0;
}

int cdc_encode(const Tally__V1__StoredEntry *s, enum cdc_format f, struct cdc_message *m)
{
	Tally__V1__Entry *e = tally__v1__entry__unpack(NULL, s->entry.len, s->entry.data);
	if (e == NULL || e->seq != s->seq) {
		tally__v1__entry__free_unpacked(e, NULL);
		return -1;
	}
	m->type = cdc_kind_name(e->kind);
	m->timestamp_s = e->time_ms > 0 ? (uint64_t)e->time_ms / 1000 : 0;
	snprintf(m->message_id, sizeof(m->message_id), "%" PRIu64, s->seq);
	int n = snprintf(m->routing_key, sizeof(m->routing_key), "%s.%s", m->type,
			 e->brand[0] != '\0' ? e->brand : "_");
	for (int i = 0; i < n && m->routing_key[i] != '.'; i++)
		m->routing_key[i] = (char)tolower((unsigned char)m->routing_key[i]);
	int rc = f == CDC_FORMAT_JSON ? encode_json(s, e, m) : encode_protobuf(s, m);
	tally__v1__entry__free_unpacked(e, NULL);
	return rc;
}
