/* A small JSON reader for control-protocol requests (one line each). */
#ifndef DDC_JSON_H
#define DDC_JSON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum jtype { J_NULL, J_BOOL, J_NUM, J_STR, J_ARR, J_OBJ };

struct jval {
    enum jtype type;
    bool b;
    double num;
    bool is_uint;          /* a non-negative integer literal, exact in u */
    uint64_t u;
    char *str;             /* J_STR */
    char *key;             /* set on members of an object */
    struct jval *child;    /* J_ARR / J_OBJ: first element */
    struct jval *next;     /* next sibling */
};

/* NULL on a syntax error, with a message in err. */
struct jval *json_parse(const char *text, char *err, size_t errlen);
void json_free(struct jval *v);
const struct jval *json_get(const struct jval *obj, const char *key);

#endif
