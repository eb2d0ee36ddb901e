/*
 * The known-delay target of figure 5: GET /delay/MS?ID is answered MS milliseconds
 * after the request head arrived, then the connection is closed. "Arrived" is the
 * kernel's receive timestamp of the request (SO_TIMESTAMPNS), not the moment a thread
 * got around to reading it. GET /stats returns how late each answer still was (the
 * moment its write began minus the deadline) as a JSON array of [ID, seconds] pairs,
 * so the harness can tell the target's lateness from the prober's error request by
 * request; GET /stats?reset also clears it.
 *
 * One thread per connection reads the request; one answerer thread writes every
 * delayed answer at its deadline. The answerer sleeps until SPIN_NS before the
 * earliest deadline (a timed wait, with a timer slack of 1 ns rather than 50 us), then
 * polls the clock until the deadline itself: a thread woken by a timer on a virtual
 * machine was seen to start up to 1.5 ms late, and one spinning thread for the last
 * 300 us of each deadline costs a few percent of a core. Deadlines are kept in a heap,
 * so answers due together go out in deadline order, one thread never contending with
 * another spinner for a core.
 *
 * It is C, not Python, because the target must be more precise than the 1 ms being
 * judged: a Python thread that needs the GIL back after its sleep can be held up by
 * milliseconds. bench/bench.py compiles it with `cc -O2 -pthread` into its work
 * directory and falls back to a Python target when no C compiler is there.
 *
 * Prints the port it listens on (127.0.0.1, an ephemeral port) on its first line.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_SAMPLES 100000
#define MAX_PENDING 65536
/* How long before a deadline the answerer stops sleeping and starts polling the clock. */
#define SPIN_NS 300000L

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static double samples[MAX_SAMPLES];
static long sample_ids[MAX_SAMPLES];
static size_t nsamples;

/* Answers waiting for their deadline: a binary min-heap on `due`, under `lock`. */
struct pending {
    struct timespec due;
    int fd;
    long id;
};
static pthread_cond_t wake = PTHREAD_COND_INITIALIZER;
static struct pending heap[MAX_PENDING];
static size_t npending;
/* Bumped by every push, so a spinning answerer notices an earlier deadline. */
static unsigned long pushes;

static int before(const struct timespec *a, const struct timespec *b) {
    return a->tv_sec < b->tv_sec || (a->tv_sec == b->tv_sec && a->tv_nsec < b->tv_nsec);
}

static void heap_swap(size_t i, size_t j) {
    struct pending t = heap[i];
    heap[i] = heap[j];
    heap[j] = t;
}

/* Under `lock`. Returns 0 when the heap is full. */
static int heap_push(struct pending p) {
    if (npending >= MAX_PENDING) return 0;
    size_t i = npending++;
    heap[i] = p;
    while (i > 0 && before(&heap[i].due, &heap[(i - 1) / 2].due)) {
        heap_swap(i, (i - 1) / 2);
        i = (i - 1) / 2;
    }
    __atomic_add_fetch(&pushes, 1, __ATOMIC_RELAXED);
    return 1;
}

/* Under `lock`, with npending > 0. */
static struct pending heap_pop(void) {
    struct pending top = heap[0];
    heap[0] = heap[--npending];
    size_t i = 0;
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < npending && before(&heap[l].due, &heap[m].due)) m = l;
        if (r < npending && before(&heap[r].due, &heap[m].due)) m = r;
        if (m == i) break;
        heap_swap(i, m);
        i = m;
    }
    return top;
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* read() that also returns the kernel's receive timestamp of the data, when there is one. */
static ssize_t read_stamped(int fd, char *buf, size_t len, struct timespec *stamp) {
    struct iovec iov = {buf, len};
    char control[CMSG_SPACE(sizeof(struct timespec))];
    struct msghdr msg = {0};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control;
    msg.msg_controllen = sizeof control;
    ssize_t n = recvmsg(fd, &msg, 0);
    if (n > 0) {
        for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c))
            if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_TIMESTAMPNS)
                memcpy(stamp, CMSG_DATA(c), sizeof *stamp);
    }
    return n;
}

static void write_all(int fd, const char *buf, size_t len) {
    while (len > 0) {
        ssize_t n = write(fd, buf, len);
        if (n <= 0) return;
        buf += n;
        len -= (size_t)n;
    }
}

static void *handle(void *arg) {
    int fd = (int)(long)arg;
    char req[8192];
    size_t have = 0;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct timespec t0 = {0, 0};
    for (;;) {
        ssize_t n = read_stamped(fd, req + have, sizeof req - 1 - have, &t0);
        if (n <= 0) goto out;
        have += (size_t)n;
        req[have] = 0;
        if (strstr(req, "\r\n\r\n")) break;
        if (have >= sizeof req - 1) goto out;
    }
    if (t0.tv_sec == 0) clock_gettime(CLOCK_REALTIME, &t0); /* no timestamp: now */
    char *path = strchr(req, ' ');
    if (!path) goto out;
    path++;
    if (strncmp(path, "/stats", 6) == 0) {
        size_t cap, len = 0;
        pthread_mutex_lock(&lock);
        cap = 64 + nsamples * 48;
        char *body = malloc(cap);
        if (!body) {
            pthread_mutex_unlock(&lock);
            goto out;
        }
        body[len++] = '[';
        for (size_t i = 0; i < nsamples; i++)
            len += (size_t)snprintf(body + len, cap - len, "%s[%ld,%.9f]", i ? "," : "",
                                    sample_ids[i], samples[i]);
        body[len++] = ']';
        if (strncmp(path, "/stats?reset", 12) == 0) nsamples = 0;
        pthread_mutex_unlock(&lock);
        char head[256];
        int hl = snprintf(head, sizeof head,
                          "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                          "Connection: close\r\nContent-Length: %zu\r\n\r\n", len);
        write_all(fd, head, (size_t)hl);
        write_all(fd, body, len);
        free(body);
        goto out;
    }
    long ms = 0, id = -1;
    if (strncmp(path, "/delay/", 7) == 0) {
        char *end;
        ms = strtol(path + 7, &end, 10);
        if (*end == '?') id = strtol(end + 1, NULL, 10);
    }
    struct pending p = {t0, fd, id};
    p.due.tv_sec += ms / 1000;
    p.due.tv_nsec += (ms % 1000) * 1000000L;
    if (p.due.tv_nsec >= 1000000000L) {
        p.due.tv_sec++;
        p.due.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&lock);
    int queued = heap_push(p);
    if (queued) pthread_cond_signal(&wake);
    pthread_mutex_unlock(&lock);
    if (queued) return NULL; /* the answerer owns the connection now */
out:
    close(fd);
    return NULL;
}

static const char resp[] =
    "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n"
    "Content-Length: 3\r\n\r\nOK\n";

static long ns_until(const struct timespec *due) {
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    return (due->tv_sec - t.tv_sec) * 1000000000L + (due->tv_nsec - t.tv_nsec);
}

static void *answerer(void *arg) {
    (void)arg;
    pthread_mutex_lock(&lock);
    for (;;) {
        if (npending == 0) {
            pthread_cond_wait(&wake, &lock);
            continue;
        }
        struct timespec due = heap[0].due;
        long left = ns_until(&due);
        if (left > SPIN_NS) {
            struct timespec until = due;
            until.tv_nsec -= SPIN_NS;
            if (until.tv_nsec < 0) {
                until.tv_sec--;
                until.tv_nsec += 1000000000L;
            }
            pthread_cond_timedwait(&wake, &lock, &until);
            continue;
        }
        if (left > 0) {
            /* Poll the clock without the lock; a push of an earlier deadline ends it. */
            unsigned long seen = __atomic_load_n(&pushes, __ATOMIC_RELAXED);
            pthread_mutex_unlock(&lock);
            while (ns_until(&due) > 0 && __atomic_load_n(&pushes, __ATOMIC_RELAXED) == seen) {
            }
            pthread_mutex_lock(&lock);
            continue;
        }
        struct pending p = heap_pop();
        pthread_mutex_unlock(&lock);
        double late = now() - (p.due.tv_sec + p.due.tv_nsec / 1e9);
        write_all(p.fd, resp, sizeof resp - 1);
        close(p.fd);
        pthread_mutex_lock(&lock);
        if (nsamples < MAX_SAMPLES) {
            sample_ids[nsamples] = p.id;
            samples[nsamples++] = late;
        }
    }
    return NULL;
}

int main(void) {
    /* The answerer's timed wait ends when asked, not up to the default 50 us timer
     * slack after it; the answerer, started below, inherits the setting. */
    prctl(PR_SET_TIMERSLACK, 1UL, 0UL, 0UL, 0UL);
    int srv = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(srv, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    /* Accepted sockets inherit it, and it turns on receive timestamps machine-wide. */
    setsockopt(srv, SOL_SOCKET, SO_TIMESTAMPNS, &one, sizeof one);
    struct sockaddr_in addr = {0};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = 0;
    if (bind(srv, (struct sockaddr *)&addr, sizeof addr) != 0 || listen(srv, 1024) != 0) {
        perror("bind/listen");
        return 1;
    }
    socklen_t alen = sizeof addr;
    getsockname(srv, (struct sockaddr *)&addr, &alen);
    pthread_t a;
    if (pthread_create(&a, NULL, answerer, NULL) != 0) {
        perror("pthread_create");
        return 1;
    }
    printf("%d\n", ntohs(addr.sin_port));
    fflush(stdout);
    for (;;) {
        int fd = accept(srv, NULL, NULL);
        if (fd < 0) continue;
        pthread_t t;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        pthread_attr_setstacksize(&attr, 256 * 1024);
        if (pthread_create(&t, &attr, handle, (void *)(long)fd) != 0) close(fd);
        pthread_attr_destroy(&attr);
    }
}
