/*
 * Recursive-descent JSON reader.  Requests are small and come from our own
 * orchestrator, so this favours clear errors over speed; \u escapes outside
 * ASCII are kept as '?' (names in the protocol are ASCII).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json.h"

#define MAX_DEPTH 16

struct parser {
    const char *s;
    const char *start;
    char *err;
    size_t errlen;
    bool failed;
};

static void *jerr(struct parser *p, const char *what)
{
    if (!p->failed) {
        snprintf(p->err, p->errlen, "bad JSON at byte %ld: %s", (long)(p->s - p->start), what);
        p->failed = true;
    }
    return NULL;
}

static void ws(struct parser *p)
{
    while (*p->s == ' ' || *p->s == '\t' || *p->s == '\n' || *p->s == '\r') {
        p->s++;
    }
}

static struct jval *newval(enum jtype t)
{
    struct jval *v = calloc(1, sizeof(*v));

    if (v) {
        v->type = t;
    }
    return v;
}

static char *parse_string(struct parser *p)
{
    size_t cap = 32, n = 0;
    char *out = malloc(cap);

    if (!out) {
        return jerr(p, "out of memory");
    }
    p->s++; /* opening quote */
    for (;;) {
        char c = *p->s++;
        if (c == '"') {
            break;
        }
        if (c == 0 || (unsigned char)c < 0x20) {
            free(out);
            p->s--;
            return jerr(p, "unterminated string");
        }
        if (c == '\\') {
            c = *p->s++;
            switch (c) {
            case '"': case '\\': case '/': break;
            case 'b': c = '\b'; break;
            case 'f': c = '\f'; break;
            case 'n': c = '\n'; break;
            case 'r': c = '\r'; break;
            case 't': c = '\t'; break;
            case 'u': {
                unsigned code;
                if (sscanf(p->s, "%4x", &code) != 1 || strlen(p->s) < 4) {
                    free(out);
                    return jerr(p, "bad \\u escape");
                }
                p->s += 4;
                c = code < 0x80 ? (char)code : '?';
                break;
            }
            default:
                free(out);
                return jerr(p, "bad escape");
            }
        }
        if (n + 2 > cap) {
            char *bigger = realloc(out, cap *= 2);
            if (!bigger) {
                free(out);
                return jerr(p, "out of memory");
            }
            out = bigger;
        }
        out[n++] = c;
    }
    out[n] = 0;
    return out;
}

static struct jval *parse_value(struct parser *p, int depth);

static struct jval *parse_container(struct parser *p, int depth, bool obj)
{
    struct jval *v = newval(obj ? J_OBJ : J_ARR), **tail;
    char close = obj ? '}' : ']';

    if (!v) {
        return jerr(p, "out of memory");
    }
    tail = &v->child;
    p->s++;
    ws(p);
    if (*p->s == close) {
        p->s++;
        return v;
    }
    for (;;) {
        char *key = NULL;
        struct jval *e;
        ws(p);
        if (obj) {
            if (*p->s != '"') {
                json_free(v);
                return jerr(p, "expected a key");
            }
            if (!(key = parse_string(p))) {
                json_free(v);
                return NULL;
            }
            ws(p);
            if (*p->s++ != ':') {
                free(key);
                json_free(v);
                return jerr(p, "expected ':'");
            }
        }
        if (!(e = parse_value(p, depth + 1))) {
            free(key);
            json_free(v);
            return NULL;
        }
        e->key = key;
        *tail = e;
        tail = &e->next;
        ws(p);
        if (*p->s == ',') {
            p->s++;
            continue;
        }
        if (*p->s == close) {
            p->s++;
            return v;
        }
        json_free(v);
        return jerr(p, obj ? "expected ',' or '}'" : "expected ',' or ']'");
    }
}

static struct jval *parse_value(struct parser *p, int depth)
{
    struct jval *v;

    if (depth > MAX_DEPTH) {
        return jerr(p, "nested too deep");
    }
    ws(p);
    switch (*p->s) {
    case '{':
        return parse_container(p, depth, true);
    case '[':
        return parse_container(p, depth, false);
    case '"':
        if (!(v = newval(J_STR))) {
            return jerr(p, "out of memory");
        }
        if (!(v->str = parse_string(p))) {
            free(v);
            return NULL;
        }
        return v;
    case 't':
    case 'f':
    case 'n': {
        static const char *const lit[] = { "true", "false", "null" };
        for (int i = 0; i < 3; i++) {
            size_t n = strlen(lit[i]);
            if (!strncmp(p->s, lit[i], n)) {
                p->s += n;
                v = newval(i == 2 ? J_NULL : J_BOOL);
                if (v) {
                    v->b = i == 0;
                }
                return v ? v : jerr(p, "out of memory");
            }
        }
        return jerr(p, "unknown literal");
    }
    default: {
        char *end;
        const char *s = p->s;
        if (!(*s == '-' || (*s >= '0' && *s <= '9'))) {
            return jerr(p, "unexpected character");
        }
        if (!(v = newval(J_NUM))) {
            return jerr(p, "out of memory");
        }
        errno = 0;
        v->num = strtod(s, &end);
        if (end == s || errno) {
            free(v);
            return jerr(p, "bad number");
        }
        p->s = end;
        if (*s != '-' && !memchr(s, '.', (size_t)(end - s)) && !memchr(s, 'e', (size_t)(end - s)) &&
            !memchr(s, 'E', (size_t)(end - s))) {
            errno = 0;
            v->u = strtoull(s, NULL, 10);
            v->is_uint = errno == 0;
        }
        return v;
    }
    }
}

struct jval *json_parse(const char *text, char *err, size_t errlen)
{
    struct parser p = { .s = text, .start = text, .err = err, .errlen = errlen };
    struct jval *v = parse_value(&p, 0);

    if (v) {
        ws(&p);
        if (*p.s) {
            json_free(v);
            return jerr(&p, "trailing characters");
        }
    }
    return v;
}

void json_free(struct jval *v)
{
    while (v) {
        struct jval *next = v->next;
        json_free(v->child);
        free(v->str);
        free(v->key);
        free(v);
        v = next;
    }
}

const struct jval *json_get(const struct jval *obj, const char *key)
{
    if (!obj || obj->type != J_OBJ) {
        return NULL;
    }
    for (const struct jval *e = obj->child; e; e = e->next) {
        if (e->key && !strcmp(e->key, key)) {
            return e;
        }
    }
    return NULL;
}
