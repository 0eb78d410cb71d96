/*
 * Control channel: a unix stream socket speaking JSON lines, served by one
 * plugin thread that never touches the access path's locks (there are none)
 * and only reads vCPU counters.  Protocol: see README.md.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "ddc.h"
#include "json.h"

#define MAX_CLIENTS 8
#define MAX_LINE (1 << 20)

struct client {
    int fd;
    char *buf;
    size_t len, cap;
    bool waiting;           /* sent activate/deactivate; answered once it is in effect */
};

static struct client clients[MAX_CLIENTS];
static int arm_after_unlock = -1;   /* a switch to arm once ctl_lock is dropped */
static const struct timeval send_timeout = { .tv_sec = 5 };


/* ---- requests ------------------------------------------------------------ */

static int only_keys(const struct jval *req, const char *const *allowed, char *err, size_t errlen)
{
    for (const struct jval *e = req->child; e; e = e->next) {
        bool ok = !strcmp(e->key, "cmd");
        for (int i = 0; !ok && allowed[i]; i++) {
            ok = !strcmp(e->key, allowed[i]);
        }
        if (!ok) {
            return fail(err, errlen, "unknown key '%s'", e->key);
        }
    }
    return 0;
}

/* An address: a JSON integer, or a string "0x..." (or decimal) for clients
 * whose numbers are doubles. */
static int get_addr(const struct jval *v, const char *what, uint64_t *out, char *err, size_t errlen)
{
    if (v && v->type == J_NUM && v->is_uint) {
        *out = v->u;
        return 0;
    }
    if (v && v->type == J_STR && !parse_u64(v->str, out, 0)) {
        return 0;
    }
    return fail(err, errlen, "%s must be an unsigned integer or a string like \"0x100000000\"", what);
}

static int get_uint(const struct jval *req, const char *key, uint64_t *out, char *err, size_t errlen)
{
    const struct jval *v = json_get(req, key);

    if (!v || v->type != J_NUM || !v->is_uint) {
        return fail(err, errlen, "%s must be a non-negative integer", key);
    }
    *out = v->u;
    return 0;
}

static int cmd_set_map(const struct jval *req, char *err, size_t errlen)
{
    static const char *const keys[] = { "ranges", NULL };
    static const char *const rkeys[] = { "start", "end", "node", "blade", NULL };
    const struct jval *rs = json_get(req, "ranges");
    struct range r[MAX_RANGES];
    unsigned n = 0;

    if (only_keys(req, keys, err, errlen)) {
        return -1;
    }
    if (!rs || rs->type != J_ARR) {
        return fail(err, errlen, "ranges must be a list of {start, end, node, blade}");
    }
    for (const struct jval *e = rs->child; e; e = e->next, n++) {
        const struct jval *b;
        uint64_t node = 0;
        char sub[256];

        if (n == MAX_RANGES) {
            return fail(err, errlen, "too many ranges (max %d)", MAX_RANGES);
        }
        if (e->type != J_OBJ) {
            return fail(err, errlen, "ranges[%u] must be an object", n);
        }
        if (only_keys(e, rkeys, sub, sizeof(sub)) ||
            get_addr(json_get(e, "start"), "start", &r[n].start, sub, sizeof(sub)) ||
            get_addr(json_get(e, "end"), "end", &r[n].end, sub, sizeof(sub)) ||
            get_uint(e, "node", &node, sub, sizeof(sub))) {
            return fail(err, errlen, "ranges[%u]: %s", n, sub);
        }
        if (node >= MAX_NODES) {
            return fail(err, errlen, "ranges[%u]: node %llu is over the maximum %d", n,
                        (unsigned long long)node, MAX_NODES - 1);
        }
        r[n].node = (uint32_t)node;
        r[n].blade = -1;
        b = json_get(e, "blade");
        if (!b || b->type == J_NULL) {
            continue;
        }
        if (b->type == J_STR) {
            if ((r[n].blade = blade_find(b->str)) < 0) {
                return fail(err, errlen, "ranges[%u]: no blade named '%s' (create it with set_link)", n,
                            b->str);
            }
        } else if (b->type == J_NUM && b->is_uint && b->u < g.nblades) {
            r[n].blade = (int)b->u;
        } else {
            return fail(err, errlen, "ranges[%u]: blade must be a blade name, an index or null", n);
        }
    }
    return map_publish(r, n, err, errlen);
}

static int cmd_set_link(const struct jval *req, char *err, size_t errlen)
{
    static const char *const keys[] = { "blade", "latency_ns", "bandwidth_gbps", NULL };
    const struct jval *name = json_get(req, "blade");
    const struct jval *bw = json_get(req, "bandwidth_gbps");
    uint64_t lat;
    double bwv;

    if (only_keys(req, keys, err, errlen)) {
        return -1;
    }
    if (!name || name->type != J_STR) {
        return fail(err, errlen, "blade must be a blade name (a string)");
    }
    if (!json_get(req, "latency_ns") && !bw) {
        return fail(err, errlen, "give latency_ns and/or bandwidth_gbps");
    }
    if (json_get(req, "latency_ns") && get_uint(req, "latency_ns", &lat, err, errlen)) {
        return -1;
    }
    if (bw && bw->type != J_NUM) {
        return fail(err, errlen, "bandwidth_gbps must be a number (0 = unlimited)");
    }
    bwv = bw ? bw->num : 0;
    return blade_set(name->str, json_get(req, "latency_ns") ? &lat : NULL, bw ? &bwv : NULL, err,
                     errlen) < 0 ? -1 : 0;
}

static int cmd_set_local_latency(const struct jval *req, char *err, size_t errlen)
{
    static const char *const keys[] = { "local_ns", NULL };
    uint64_t v = 0;

    if (only_keys(req, keys, err, errlen) || get_uint(req, "local_ns", &v, err, errlen)) {
        return -1;
    }
    STORE(&g.local_ns, v);
    return 0;
}

/* How much owed stall an inject-mode vCPU gathers before it pays (stall()). */
static int cmd_set_batch(const struct jval *req, char *err, size_t errlen)
{
    static const char *const keys[] = { "batch_ns", NULL };
    uint64_t v = 0;

    if (only_keys(req, keys, err, errlen) || get_uint(req, "batch_ns", &v, err, errlen)) {
        return -1;
    }
    return batch_set(v, err, errlen);
}

static int cmd_set_mode(const struct jval *req, char *err, size_t errlen)
{
    static const char *const keys[] = { "mode", NULL };
    const struct jval *m = json_get(req, "mode");

    if (only_keys(req, keys, err, errlen)) {
        return -1;
    }
    if (!m || m->type != J_STR || mode_parse(m->str) < 0) {
        return fail(err, errlen, "mode must be \"inject\", \"account\" or \"paced\"");
    }
    return mode_set(mode_parse(m->str), err, errlen);
}

/* Paced mode's dilation, cost of an instruction and catch-up window; any of
 * them, at run time.  Every vCPU re-anchors on the wall clock. */
static int cmd_set_pacing(const struct jval *req, char *err, size_t errlen)
{
    static const char *const keys[] = { "dilation", "cpi_ns", "window_us", NULL };
    const struct jval *k = json_get(req, "dilation"), *cpi = json_get(req, "cpi_ns");
    uint64_t window;

    if (only_keys(req, keys, err, errlen)) {
        return -1;
    }
    if (!k && !cpi && !json_get(req, "window_us")) {
        return fail(err, errlen, "give dilation, cpi_ns and/or window_us");
    }
    if ((k && k->type != J_NUM) || (cpi && cpi->type != J_NUM)) {
        return fail(err, errlen, "dilation and cpi_ns must be numbers");
    }
    if (json_get(req, "window_us") && get_uint(req, "window_us", &window, err, errlen)) {
        return -1;
    }
    return pace_set(k ? &k->num : NULL, cpi ? &cpi->num : NULL, json_get(req, "window_us") ? &window : NULL,
                    err, errlen);
}

/*
 * activate / deactivate.  1: the reply waits until the switch is in effect
 * (a vCPU must run some code for that, see ddc.c); 0: reply now.
 */
static int cmd_switch(const struct jval *req, bool on, struct sbuf *out, char *err, size_t errlen)
{
    static const char *const keys[] = { "wait", NULL };
    const struct jval *w = json_get(req, "wait");

    if (only_keys(req, keys, err, errlen)) {
        return -1;
    }
    if (w && w->type != J_BOOL) {
        return fail(err, errlen, "wait must be true or false");
    }
    switch (switch_request(on)) {
    case SW_DONE:
        sb_printf(out, "{\"ok\":true,\"active\":%s}", on ? "true" : "false");
        return 0;
    case SW_ARM:
        arm_after_unlock = on;
        break;
    }
    if (w && !w->b) {
        sb_printf(out, "{\"ok\":true,\"active\":%s,\"pending\":true}",
                  LOAD(&g.active) ? "true" : "false");
        return 0;
    }
    return 1;
}

static int cmd_no_args(const struct jval *req, char *err, size_t errlen)
{
    static const char *const keys[] = { NULL };

    return only_keys(req, keys, err, errlen);
}

/* Handle one request line; the reply (one line, no newline) goes into out.
 * true: no reply yet, the client waits for a switch (see on_switch_event). */
static bool handle(const char *line, struct sbuf *out)
{
    char err[512] = "";
    struct jval *req = json_parse(line, err, sizeof(err));
    const struct jval *cmd;
    int rc = -1;

    if (!req) {
        goto reply;
    }
    cmd = json_get(req, "cmd");
    if (req->type != J_OBJ || !cmd || cmd->type != J_STR) {
        snprintf(err, sizeof(err), "a request is an object with a \"cmd\" string");
        goto reply;
    }
    pthread_mutex_lock(&g.ctl_lock);
    if (!strcmp(cmd->str, "stats") || !strcmp(cmd->str, "config")) {
        if ((rc = cmd_no_args(req, err, sizeof(err))) == 0) {
            sb_puts(out, "{\"ok\":true,");
            if (!strcmp(cmd->str, "stats")) {
                stats_render(out);
            } else {
                config_render(out);
            }
            sb_putc(out, '}');
        }
    } else if (!strcmp(cmd->str, "reset")) {
        if ((rc = cmd_no_args(req, err, sizeof(err))) == 0) {
            stats_reset();
        }
    } else if (!strcmp(cmd->str, "set_map")) {
        rc = cmd_set_map(req, err, sizeof(err));
    } else if (!strcmp(cmd->str, "set_link")) {
        rc = cmd_set_link(req, err, sizeof(err));
    } else if (!strcmp(cmd->str, "set_local_latency")) {
        rc = cmd_set_local_latency(req, err, sizeof(err));
    } else if (!strcmp(cmd->str, "set_batch")) {
        rc = cmd_set_batch(req, err, sizeof(err));
    } else if (!strcmp(cmd->str, "set_mode")) {
        rc = cmd_set_mode(req, err, sizeof(err));
    } else if (!strcmp(cmd->str, "set_pacing")) {
        rc = cmd_set_pacing(req, err, sizeof(err));
    } else if (!strcmp(cmd->str, "activate") || !strcmp(cmd->str, "deactivate")) {
        rc = cmd_switch(req, !strcmp(cmd->str, "activate"), out, err, sizeof(err));
    } else {
        snprintf(err, sizeof(err), "unknown cmd '%s' (valid: stats, config, reset, set_map, "
                 "set_link, set_local_latency, set_batch, set_mode, set_pacing, activate, deactivate)",
                 cmd->str);
    }
    pthread_mutex_unlock(&g.ctl_lock);
    if (arm_after_unlock >= 0) {
        switch_arm(arm_after_unlock);
        arm_after_unlock = -1;
    }
    if (rc == 1) {
        json_free(req);
        return true;
    }
reply:
    if (rc == 0 && out->len == 0) {
        sb_puts(out, "{\"ok\":true}");
    } else if (rc != 0) {
        out->len = 0;
        sb_puts(out, "{\"ok\":false,\"error\":");
        sb_str(out, err);
        sb_putc(out, '}');
    }
    json_free(req);
    return false;
}

/* ---- the server thread --------------------------------------------------- */

static void client_close(struct client *c)
{
    close(c->fd);
    free(c->buf);
    memset(c, 0, sizeof(*c));
    c->fd = -1;
}

static bool send_all(int fd, const char *p, size_t n)
{
    while (n) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR) {
            continue;
        }
        if (w <= 0) {
            return false;
        }
        p += w;
        n -= (size_t)w;
    }
    return true;
}

/* Answer every complete line buffered, up to one that has to wait.
 * false: drop the client. */
static bool client_serve(struct client *c)
{
    char *nl;

    while (!c->waiting && (nl = memchr(c->buf, '\n', c->len))) {
        struct sbuf out = { 0 };
        size_t used = (size_t)(nl - c->buf) + 1;
        bool ok = true;
        *nl = 0;
        if (nl > c->buf && nl[-1] == '\r') {
            nl[-1] = 0;
        }
        c->waiting = handle(c->buf, &out);
        if (!c->waiting) {
            sb_putc(&out, '\n');
            ok = send_all(c->fd, out.p, out.len);
        }
        free(out.p);
        memmove(c->buf, c->buf + used, c->len - used + 1);
        c->len -= used;
        if (!ok) {
            return false;
        }
    }
    return true;
}

/* Read what is there; answer what can be answered.  false: drop the client. */
static bool client_read(struct client *c)
{
    ssize_t r;

    if (c->cap - c->len < 4096) {
        size_t cap = c->cap ? c->cap * 2 : 8192;
        char *p;
        if (cap > MAX_LINE) {
            return false;   /* a line this long is not a request */
        }
        if (!(p = realloc(c->buf, cap))) {
            return false;
        }
        c->buf = p;
        c->cap = cap;
    }
    r = read(c->fd, c->buf + c->len, c->cap - c->len - 1);
    if (r <= 0) {
        return r < 0 && errno == EINTR;
    }
    c->len += (size_t)r;
    c->buf[c->len] = 0;
    return client_serve(c);
}

/* A vCPU finished a switch (ddc.c on_reset): answer the clients waiting for
 * it once the state is the one last asked for, or start the next switch. */
static void on_switch_event(void)
{
    char drain[64];
    bool settled, on;

    while (read(g.event_pipe[0], drain, sizeof(drain)) > 0) {
    }
    pthread_mutex_lock(&g.ctl_lock);
    switch_done();
    on = LOAD(&g.want);
    settled = switch_settled();
    if (!settled && switch_request(on) == SW_ARM) {
        arm_after_unlock = on;
    }
    on = LOAD(&g.active);
    pthread_mutex_unlock(&g.ctl_lock);
    if (arm_after_unlock >= 0) {
        switch_arm(arm_after_unlock);
        arm_after_unlock = -1;
    }
    if (!settled) {
        return;
    }
    for (int i = 0; i < MAX_CLIENTS; i++) {
        struct client *c = &clients[i];
        char reply[48];
        int n;
        if (c->fd < 0 || !c->waiting) {
            continue;
        }
        n = snprintf(reply, sizeof(reply), "{\"ok\":true,\"active\":%s}\n", on ? "true" : "false");
        c->waiting = false;
        if (!send_all(c->fd, reply, (size_t)n) || !client_serve(c)) {
            client_close(c);
        }
    }
}

static void *ctl_main(void *arg)
{
    (void)arg;
    for (;;) {
        struct pollfd pf[MAX_CLIENTS + 3];
        int n = 0, map[MAX_CLIENTS];

        pf[n++] = (struct pollfd){ .fd = g.wake_pipe[0], .events = POLLIN };
        pf[n++] = (struct pollfd){ .fd = g.listen_fd, .events = POLLIN };
        pf[n++] = (struct pollfd){ .fd = g.event_pipe[0], .events = POLLIN };
        for (int i = 0; i < MAX_CLIENTS; i++) {
            if (clients[i].fd >= 0) {
                /* A waiting client's next requests stay unread (replies
                 * keep their order); a hang-up is still reported. */
                map[n - 3] = i;
                pf[n++] = (struct pollfd){ .fd = clients[i].fd,
                                           .events = clients[i].waiting ? 0 : POLLIN };
            }
        }
        if (poll(pf, (nfds_t)n, -1) < 0) {
            if (errno == EINTR) {
                continue;
            }
            break;
        }
        if (pf[0].revents) {
            break;
        }
        for (int k = 3; k < n; k++) {
            struct client *c = &clients[map[k - 3]];
            if (!pf[k].revents) {
                continue;
            }
            if (c->waiting ? true : !client_read(c)) {
                client_close(c);
            }
        }
        if (pf[2].revents) {
            on_switch_event();
        }
        if (pf[1].revents & POLLIN) {
            int fd = accept4(g.listen_fd, NULL, NULL, SOCK_CLOEXEC);
            int i;
            if (fd < 0) {
                continue;
            }
            for (i = 0; i < MAX_CLIENTS && clients[i].fd >= 0; i++) {
            }
            if (i == MAX_CLIENTS) {
                static const char busy[] = "{\"ok\":false,\"error\":\"too many clients\"}\n";
                send_all(fd, busy, sizeof(busy) - 1);
                close(fd);
                continue;
            }
            /* A client that stops reading must not wedge this thread (and
             * with it QEMU's exit, which joins it). */
            setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &send_timeout, sizeof(send_timeout));
            clients[i].fd = fd;
        }
    }
    for (int i = 0; i < MAX_CLIENTS; i++) {
        if (clients[i].fd >= 0) {
            client_close(&clients[i]);
        }
    }
    return NULL;
}

/* A socket file left by a killed QEMU is replaced; a live one is not. */
static int claim_path(const struct sockaddr_un *sa, char *err, size_t errlen)
{
    struct stat st;
    int fd, rc;

    if (lstat(sa->sun_path, &st) < 0) {
        return errno == ENOENT ? 0 : fail(err, errlen, "sock=%s: %s", sa->sun_path, strerror(errno));
    }
    if (!S_ISSOCK(st.st_mode)) {
        return fail(err, errlen, "sock=%s exists and is not a socket", sa->sun_path);
    }
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        return fail(err, errlen, "socket: %s", strerror(errno));
    }
    rc = connect(fd, (const struct sockaddr *)sa, sizeof(*sa));
    close(fd);
    if (rc == 0) {
        return fail(err, errlen, "sock=%s is served by another live process", sa->sun_path);
    }
    if (unlink(sa->sun_path) < 0) {
        return fail(err, errlen, "sock=%s is stale but cannot be removed: %s", sa->sun_path,
                    strerror(errno));
    }
    return 0;
}

int ctl_start(char *err, size_t errlen)
{
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    sigset_t all, old;
    int rc;

    for (int i = 0; i < MAX_CLIENTS; i++) {
        clients[i].fd = -1;
    }
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", g.sock_path);
    if (claim_path(&sa, err, errlen)) {
        return -1;
    }
    g.listen_fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (g.listen_fd < 0) {
        return fail(err, errlen, "socket: %s", strerror(errno));
    }
    if (bind(g.listen_fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || chmod(sa.sun_path, 0600) < 0 ||
        listen(g.listen_fd, MAX_CLIENTS) < 0) {
        rc = errno;
        close(g.listen_fd);
        g.listen_fd = -1;
        unlink(sa.sun_path);
        return fail(err, errlen, "sock=%s: %s", sa.sun_path, strerror(rc));
    }
    /* event_pipe is written by a vCPU thread: it must never block there. */
    if (pipe2(g.wake_pipe, O_CLOEXEC) < 0 || pipe2(g.event_pipe, O_CLOEXEC | O_NONBLOCK) < 0) {
        rc = errno;
        ctl_stop();
        return fail(err, errlen, "pipe: %s", strerror(rc));
    }
    /* QEMU's signals (SIGTERM, SIG_IPI, ...) must keep going to its threads. */
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    rc = pthread_create(&g.ctl_thread, NULL, ctl_main, NULL);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc) {
        ctl_stop();
        return fail(err, errlen, "cannot start the control thread: %s", strerror(rc));
    }
    g.ctl_running = true;
    return 0;
}

void ctl_stop(void)
{
    if (g.ctl_running) {
        ssize_t w = write(g.wake_pipe[1], "x", 1);
        struct timespec dl;
        (void)w;
        /* Bounded: the control thread may be stuck registering a kick on
         * QEMU's plugin lock, which user mode's exit path (our caller) holds.
         * Then it is left behind (the process is exiting) with its fds. */
        clock_gettime(CLOCK_REALTIME, &dl);
        dl.tv_sec += 2;
        if (pthread_timedjoin_np(g.ctl_thread, NULL, &dl)) {
            fprintf(stderr, "libddc: control thread did not stop; exiting without it\n");
            g.ctl_running = false;
            if (g.listen_fd >= 0) {
                unlink(g.sock_path);
            }
            return;
        }
        g.ctl_running = false;
    }
    for (int i = 0; i < 2; i++) {
        if (g.wake_pipe[i] >= 0) {
            close(g.wake_pipe[i]);
            g.wake_pipe[i] = -1;
        }
    }
    /* event_pipe stays open: a vCPU may still finish a switch and write to
     * it, and a pipe without a reader would raise SIGPIPE in that vCPU. */
    if (g.listen_fd >= 0) {
        close(g.listen_fd);
        g.listen_fd = -1;
        unlink(g.sock_path);
    }
}
