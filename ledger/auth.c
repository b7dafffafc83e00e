/*
 * Who may do what (the matrix documented in ledger.h), field validation, and the
 * helpers that fill command results.
 */
#include <assert.h>
#include <stdio.h>
#include <string.h>

#include "ledger/internal.h"

#define R(role) (1u << TALLY__V1__ROLE__##role)
#define WRITERS (R(ADMIN) | R(MALL) | R(COMMUNITY) | R(DEALER) | R(PARTNER))

/* Roles allowed per command body; brand scope is checked by each handler. Reverse is
 * refined by the kind of the original entry (see do_reverse). */
static uint32_t role_mask(Tally__V1__Command__BodyCase body)
{
	switch (body) {
	case TALLY__V1__COMMAND__BODY_REGISTER_BRAND:
	case TALLY__V1__COMMAND__BODY_UPDATE_BRAND:
	case TALLY__V1__COMMAND__BODY_SET_AGREEMENT:
	case TALLY__V1__COMMAND__BODY_ADJUST:
	case TALLY__V1__COMMAND__BODY_IMPORT_POINTS:
		return R(ADMIN);
	case TALLY__V1__COMMAND__BODY_OPEN_MEMBER:
	case TALLY__V1__COMMAND__BODY_UPDATE_MEMBER:
		return WRITERS;
	case TALLY__V1__COMMAND__BODY_ACCRUE:
		return R(ADMIN) | R(COMMUNITY) | R(DEALER) | R(PARTNER);
	case TALLY__V1__COMMAND__BODY_REDEEM:
	case TALLY__V1__COMMAND__BODY_HOLD:
	case TALLY__V1__COMMAND__BODY_CAPTURE:
	case TALLY__V1__COMMAND__BODY_VOID:
		return R(ADMIN) | R(MALL);
	case TALLY__V1__COMMAND__BODY_REVERSE:
		return WRITERS;
	case TALLY__V1__COMMAND__BODY_TRANSFER:
		return R(ADMIN) | R(MALL) | R(COMMUNITY);
	case TALLY__V1__COMMAND__BODY_EXCHANGE:
	case TALLY__V1__COMMAND__BODY_SETTLE:
	case TALLY__V1__COMMAND__BODY_CONFIRM_SETTLEMENT:
		return R(ADMIN) | R(PARTNER);
	case TALLY__V1__COMMAND__BODY_EXPIRE:
		return R(ADMIN) | R(SYSTEM);
	case TALLY__V1__COMMAND__BODY_SET_RULES:
		return R(SYSTEM);
	default:
		return 0;
	}
}

bool tally_ledger_role_allows(Tally__V1__Role role, Tally__V1__Command__BodyCase body)
{
	if ((unsigned)role > TALLY__V1__ROLE__SYSTEM)
		return false;
	return (role_mask(body) & (1u << role)) != 0;
}

bool is_all_scope(const Tally__V1__Principal *p)
{
	assert(p != NULL);
	return p->n_brands == 1 && strcmp(p->brands[0], "*") == 0;
}

bool in_scope(const Tally__V1__Principal *p, const char *brand)
{
	assert(p != NULL && brand != NULL);
	if (p->role == TALLY__V1__ROLE__SYSTEM)
		return true;
	for (size_t i = 0; i < p->n_brands; i++)
		if (strcmp(p->brands[i], "*") == 0 || strcmp(p->brands[i], brand) == 0)
			return true;
	return false;
}

/* The two brands a command about a pair names (agreement, settlement): its entry
 * concerns both, whichever one it is filed under. NULLs for other commands. */
void command_pair(const Tally__V1__Command *c, const char *pair[2])
{
	pair[0] = pair[1] = NULL;
	if (c == NULL)
		return;
	if (c->body_case == TALLY__V1__COMMAND__BODY_SET_AGREEMENT) {
		pair[0] = c->set_agreement->from_brand;
		pair[1] = c->set_agreement->to_brand;
	} else if (c->body_case == TALLY__V1__COMMAND__BODY_SETTLE) {
		pair[0] = c->settle->brand_a;
		pair[1] = c->settle->brand_b;
	}
}

/* [a-z0-9_-]{1,32} */
bool valid_brand_id(const char *s)
{
	assert(s != NULL);
	size_t n = 0;
	for (; s[n] != '\0'; n++) {
		char c = s[n];
		bool ok = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '-';
		if (!ok || n >= TALLY_BRAND_ID_BYTES_MAX)
			return false;
	}
	return n > 0;
}

/* 1..64 bytes, no control characters (the ids end up in keys, logs and JSON). */
bool valid_member_id(const char *s)
{
	return valid_text(s, 1, TALLY_MEMBER_ID_BYTES_MAX);
}

bool valid_text(const char *s, size_t min, size_t max)
{
	assert(s != NULL);
	assert(min <= max);
	size_t n = 0;
	for (; s[n] != '\0'; n++)
		if ((unsigned char)s[n] < 0x20 || s[n] == 0x7f || n >= max)
			return false;
	return n >= min;
}

bool valid_points(int64_t p)
{
	return p > 0 && p <= TALLY_POINTS_MAX;
}

int reject(struct apply *a, Tally__V1__CommandResult *r, Tally__V1__ResultCode code,
	   const char *fmt, ...)
{
	assert(r != NULL && fmt != NULL);
	assert(code != TALLY__V1__RESULT_CODE__OK);
	char buf[256];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	r->code = code;
	r->message = tally_arena_strdup(a->out, buf);
	return r->message == NULL ? TALLY_ENOMEM : 0;
}

void result_ok(Tally__V1__CommandResult *r, const Tally__V1__Account *acct)
{
	assert(r != NULL);
	r->code = TALLY__V1__RESULT_CODE__OK;
	if (acct != NULL) {
		r->available = acct->available;
		r->held = acct->held;
	}
}
