/*
 * rpc/pbjson — any protobuf-c message as JSON, by its descriptor.
 *
 * The proto3 JSON mapping, with the proto's own field names (what Google's
 * json_format prints with preserving_proto_field_name, and what its parsers read
 * back): fields at their default are left out, enums by name, 64-bit integers as
 * decimal strings (so no JSON reader rounds them), bytes as base64, repeated fields as
 * arrays, a oneof by the field that is set. One line, no blanks. The schema has no
 * floating-point fields; a float or double field is written as JSON null.
 */
#ifndef TALLY_RPC_PBJSON_H
#define TALLY_RPC_PBJSON_H

#include <stdio.h>

#include <protobuf-c/protobuf-c.h>

/* Writes m as one JSON object to f. */
void tally_pbjson_write(FILE *f, const ProtobufCMessage *m);

#endif
