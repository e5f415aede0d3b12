/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The wire operations, one row each (common/ops.c): code, name, request fields with their
 * bounds, the permission the peer needs and the field an OK answer carries. Everything that
 * knows about an operation reads this table: request validation, the daemon's dispatch (its
 * handlers sit in an array bound to the rows), op= in the audit log, the request counters
 * of STATUS and the fuzz corpus generator (tests/fuzz/make_corpus.py parses the rows).
 * Adding an operation: docs/conventions.md.
 */
#ifndef P11PSK_OPS_H
#define P11PSK_OPS_H

#include <stddef.h>
#include <stdint.h>

#include "p11psk/wire.h"

/* What the peer must hold before the request is looked at. */
enum p11psk_perm {
    P11PSK_PERM_NONE = 0, /* anyone who may connect */
    P11PSK_PERM_KEY,      /* the key's allow rule: checked by the handler once the key is known */
    P11PSK_PERM_STATUS,   /* allow-status (or allow-admin) */
    P11PSK_PERM_ADMIN,    /* allow-admin */
};

/* One request field. Fields a row does not list are refused. */
typedef struct {
    uint8_t tag;      /* P11PSK_T_*; 0 ends the list */
    uint8_t required; /* 0: optional */
    uint16_t minlen, maxlen;
    uint32_t minval, maxval; /* value bounds of a 1, 2 or 4 byte integer; maxval 0: none */
} p11psk_field_rule;

#define P11PSK_OP_FIELDS_MAX 7

typedef struct {
    uint8_t code;     /* P11PSK_OP_* */
    const char *name; /* op= in the audit log, requests{op=...} in STATUS */
    uint8_t perm;     /* P11PSK_PERM_* */
    const char *what; /* for a refusal: "uid N may not <what>" */
    uint8_t answer;   /* the field an OK answer carries */
    p11psk_field_rule fields[P11PSK_OP_FIELDS_MAX]; /* checked in this order */
} p11psk_op_info;

/* The table: p11psk_ops_n rows. A row's index is its slot in the request counters, in the
 * order STATUS lists them; unknown codes count in slot p11psk_ops_n ("other"). Counter
 * arrays have room for P11PSK_OPS_MAX rows (ops.c checks that the table fits). */
#define P11PSK_OPS_MAX 32
#define P11PSK_OP_SLOTS (P11PSK_OPS_MAX + 1)
extern const p11psk_op_info p11psk_ops[];
extern const size_t p11psk_ops_n;

/* The row index of code, or p11psk_ops_n when no row has it. */
size_t p11psk_op_index(int code);
/* The row of code, or NULL. */
const p11psk_op_info *p11psk_op_find(int code);
/* A counter slot's name: the row's name, or "other". */
const char *p11psk_op_slot_name(size_t slot);
/* A tag's name as error texts use it ("PREFIX"), or "unknown". */
const char *p11psk_tag_str(int tag);

enum p11psk_field_rc {
    P11PSK_FIELD_OK = 0,
    P11PSK_FIELD_MISSING = -1,   /* a required field is absent */
    P11PSK_FIELD_BAD_SIZE = -2,  /* length outside the row's bounds */
    P11PSK_FIELD_BAD_VALUE = -3, /* integer outside the row's bounds */
    P11PSK_FIELD_FORBIDDEN = -4, /* a field the row does not list */
};

/* Checks m's fields against op's row. Returns P11PSK_FIELD_OK, or a negative
 * P11PSK_FIELD_* with the reason for the operator in why (e.g. "missing PREFIX field"). */
int p11psk_op_validate(const p11psk_op_info *op, const p11psk_msg *m, char *why, size_t whylen);

#endif
