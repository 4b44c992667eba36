/* Child servers of attnd-bench: the local attnd it starts when no --target
 * is given, and the echo server of --baseline.
 *
 * A child is started with fork + exec, gets "--port-file <tmpdir>/port"
 * appended to its arguments, and is ready once that file exists (attnd
 * writes it atomically after binding). Its stdout is discarded and its
 * stderr kept in <tmpdir>/stderr.log, shown only when it fails to start or
 * does not exit 0. Children must not outlive us: each
 * sets PR_SET_PDEATHSIG (covers a crash or SIGKILL of the bench), and the
 * ones still registered are sent SIGTERM from an atexit hook and from our
 * SIGINT/SIGTERM handler (kill() is async-signal-safe; the handler then
 * re-raises the signal with its default action).
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "bench.h"

#define MAX_CHILDREN 4

/* pids of live children, for the exit and signal hooks (0: free slot) */
static volatile pid_t children[MAX_CHILDREN];

static void register_child(pid_t pid)
{
    for (int i = 0; i < MAX_CHILDREN; i++)
        if (!children[i]) {
            children[i] = pid;
            return;
        }
}

static void unregister_child(pid_t pid)
{
    for (int i = 0; i < MAX_CHILDREN; i++)
        if (children[i] == pid)
            children[i] = 0;
}

static void kill_children(void)
{
    for (int i = 0; i < MAX_CHILDREN; i++)
        if (children[i] > 0)
            kill(children[i], SIGTERM);
}

static void on_signal(int sig)
{
    static volatile sig_atomic_t seen;
    if (!seen) { /* first: stop the run gracefully, it cleans up */
        seen = 1;
        attnd_bench_interrupt();
        return;
    }
    kill_children(); /* second: give up now */
    signal(sig, SIG_DFL);
    raise(sig);
}

void attnd_bench_child_hooks(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    atexit(kill_children);
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* Copy the child's log (its stderr) to ours: it is shown only when
 * something went wrong, so that a clean run prints no server chatter. */
static void show_log(const attnd_bench_child *ch)
{
    char path[96], line[512];
    snprintf(path, sizeof path, "%s/stderr.log", ch->dir);
    FILE *f = fopen(path, "r");
    if (!f)
        return;
    while (fgets(line, sizeof line, f))
        fprintf(stderr, "  | %s", line);
    fclose(f);
}

static void remove_port_file(attnd_bench_child *ch)
{
    char path[96];
    if (!ch->dir[0])
        return;
    snprintf(path, sizeof path, "%s/port", ch->dir);
    unlink(path);
    snprintf(path, sizeof path, "%s/stderr.log", ch->dir);
    unlink(path);
    rmdir(ch->dir);
    ch->dir[0] = '\0';
}

int attnd_bench_child_start(attnd_bench_child *ch, const char *const *argv, int timeout_ms)
{
    const char *args[64];
    char port_file[96];
    int n = 0;
    pid_t parent = getpid();

    memset(ch, 0, sizeof *ch);
    snprintf(ch->dir, sizeof ch->dir, "/tmp/attnd-bench-XXXXXX");
    if (!mkdtemp(ch->dir)) {
        fprintf(stderr, "attnd-bench: mkdtemp: %s\n", strerror(errno));
        ch->dir[0] = '\0';
        return -1;
    }
    snprintf(port_file, sizeof port_file, "%s/port", ch->dir);
    for (; argv[n] && n < 60; n++)
        args[n] = argv[n];
    args[n++] = "--port-file";
    args[n++] = port_file;
    args[n] = NULL;

    ch->pid = fork();
    if (ch->pid < 0) {
        fprintf(stderr, "attnd-bench: fork: %s\n", strerror(errno));
        remove_port_file(ch);
        return -1;
    }
    if (ch->pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGTERM);
        if (getppid() != parent)
            _exit(127);
        char log[96];
        snprintf(log, sizeof log, "%s/stderr.log", ch->dir);
        int devnull = open("/dev/null", O_WRONLY);
        int logfd = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        if (devnull >= 0)
            dup2(devnull, STDOUT_FILENO);
        if (logfd >= 0)
            dup2(logfd, STDERR_FILENO);
        signal(SIGINT, SIG_IGN); /* a terminal ^C reaches us; we stop it */
        execv(args[0], (char *const *)args);
        fprintf(stderr, "attnd-bench: exec %s: %s\n", args[0], strerror(errno));
        _exit(127);
    }
    register_child(ch->pid);
    for (int waited = 0; waited < timeout_ms; waited += 20) {
        FILE *f = fopen(port_file, "r");
        if (f) {
            int port = 0;
            int ok = fscanf(f, "%d", &port) == 1 && port > 0;
            fclose(f);
            if (ok) {
                ch->port = port;
                return 0;
            }
        }
        int status;
        if (waitpid(ch->pid, &status, WNOHANG) == ch->pid) {
            fprintf(stderr, "attnd-bench: %s exited before it was ready (status %d); its "
                            "log:\n", args[0], WIFEXITED(status) ? WEXITSTATUS(status) : -1);
            show_log(ch);
            unregister_child(ch->pid);
            ch->pid = 0;
            remove_port_file(ch);
            return -1;
        }
        sleep_ms(20);
    }
    fprintf(stderr, "attnd-bench: %s not ready after %d ms; its log:\n", args[0], timeout_ms);
    show_log(ch);
    attnd_bench_child_stop(ch);
    return -1;
}

int attnd_bench_child_stop(attnd_bench_child *ch)
{
    int rc = 0;
    if (ch->pid > 0) {
        int status = 0;
        rc = -1;
        kill(ch->pid, SIGTERM);
        for (int waited = 0;; waited += 20) {
            pid_t w = waitpid(ch->pid, &status, WNOHANG);
            if (w == ch->pid) {
                if (WIFEXITED(status))
                    rc = WEXITSTATUS(status);
                break;
            }
            if (w < 0 && errno != EINTR)
                break;
            if (waited >= 10000) {
                kill(ch->pid, SIGKILL);
                waitpid(ch->pid, &status, 0);
                break;
            }
            sleep_ms(20);
        }
        unregister_child(ch->pid);
        ch->pid = 0;
        if (rc) {
            fprintf(stderr, "attnd-bench: the server it started did not exit cleanly; its "
                            "log:\n");
            show_log(ch);
        }
    }
    remove_port_file(ch);
    return rc;
}

static int is_executable(const char *p)
{
    return access(p, X_OK) == 0;
}

void attnd_bench_find_attnd(const char *given, char *out, size_t n)
{
    char self[PATH_MAX], cand[PATH_MAX + 32];
    ssize_t k;

    out[0] = '\0';
    if (given && given[0]) {
        if (is_executable(given))
            snprintf(out, n, "%s", given);
        return;
    }
    k = readlink("/proc/self/exe", self, sizeof self - 1);
    if (k <= 0)
        return;
    self[k] = '\0';
    char *slash = strrchr(self, '/');
    if (!slash)
        return;
    *slash = '\0';
    snprintf(cand, sizeof cand, "%s/attnd", self);
    if (is_executable(cand)) {
        snprintf(out, n, "%s", cand);
        return;
    }
    /* the build tree: build/client/bench/attnd-bench, build/service/attnd */
    snprintf(cand, sizeof cand, "%s/../../service/attnd", self);
    if (is_executable(cand))
        snprintf(out, n, "%s", cand);
}
