/* Helpers of the attnd-bench suite (see bench_testutil.h). */
#include <check.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "bench_testutil.h"

#ifndef ATTND_BENCH_BIN
#error "ATTND_BENCH_BIN (the attnd-bench executable) must be defined"
#endif
#ifndef ATTND_BIN
#error "ATTND_BIN (the attnd executable) must be defined"
#endif

void bt_tmpname(char *buf, size_t n, const char *suffix)
{
    static unsigned seq;
    snprintf(buf, n, "/tmp/attnd-bench-test-%d-%u%s", (int)getpid(), seq++, suffix);
}

static char *slurp(const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *s = n >= 0 ? malloc((size_t)n + 1) : NULL;
    if (s && fread(s, 1, (size_t)n, f) != (size_t)n) {
        free(s);
        s = NULL;
    }
    if (s)
        s[n] = '\0';
    fclose(f);
    return s;
}

int bt_run(char **json_p, const char *const *args)
{
    char json[128];
    const char *argv[64];
    int n = 0, status;
    pid_t parent = getpid();

    bt_tmpname(json, sizeof json, ".json");
    argv[n++] = ATTND_BENCH_BIN;
    argv[n++] = "--attnd";
    argv[n++] = ATTND_BIN;
    argv[n++] = "--json";
    argv[n++] = json;
    argv[n++] = "--no-progress";
    for (int i = 0; args[i] && n < 63; i++)
        argv[n++] = args[i];
    argv[n] = NULL;
    printf("run:");
    for (int i = 0; i < n; i++)
        printf(" %s", argv[i]);
    printf("\n");
    fflush(stdout);

    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
            _exit(127);
        execv(argv[0], (char *const *)argv);
        _exit(127);
    }
    /* a hang guard only: a healthy run takes seconds */
    for (int waited = 0;; waited += 50) {
        pid_t w = waitpid(pid, &status, WNOHANG);
        if (w == pid)
            break;
        if (waited > 300000) {
            kill(pid, SIGKILL);
            waitpid(pid, &status, 0);
            break;
        }
        struct timespec ts = {0, 50000000};
        nanosleep(&ts, NULL);
    }
    if (json_p)
        *json_p = slurp(json);
    unlink(json);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

/* Find "\n<2*level spaces>\"key\": " in s[from, to); its offset or -1. */
static long find_key(const char *s, long from, long to, int level, const char *key)
{
    char pat[160];
    int k = snprintf(pat, sizeof pat, "\n%*s\"%s\": ", 2 * level, "", key);
    const char *p = strstr(s + from, pat);
    return p && p - s + k <= to ? (long)(p - s) : -1;
}

int bt_num(const char *json, const char *path, double *v_p)
{
    char key[64];
    long from = 0, to = (long)strlen(json);
    int level = 1;

    if (!json)
        return -1;
    for (const char *p = path;; level++) {
        const char *dot = strchr(p, '.');
        size_t n = dot ? (size_t)(dot - p) : strlen(p);
        if (n >= sizeof key)
            return -1;
        memcpy(key, p, n);
        key[n] = '\0';
        long at = find_key(json, from, to, level, key);
        if (at < 0)
            return -1;
        const char *val = json + at + 2 * level + (long)n + 5; /* \n, spaces, "", :, space */
        if (!dot) {
            char *end;
            errno = 0;
            double v = strtod(val, &end);
            if (end == val || errno)
                return -1;
            *v_p = v;
            return 0;
        }
        if (*val != '{')
            return -1;
        char close[80];
        snprintf(close, sizeof close, "\n%*s}", 2 * level, "");
        const char *end = strstr(val, close);
        if (!end)
            return -1;
        from = (long)(val - json);
        to = (long)(end - json) + 1;
        p = dot + 1;
    }
}

double bt_must(const char *json, const char *path)
{
    double v = 0;
    ck_assert_msg(json != NULL, "no JSON report was written");
    ck_assert_msg(bt_num(json, path, &v) == 0, "JSON report has no number at %s", path);
    return v;
}
