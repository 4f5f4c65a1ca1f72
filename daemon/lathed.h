/* lathed's internals, shared by its files: lathed.c (setup, reactor loop, outbox), ops.c (client requests),
 * events.c (transitions, events, watchers, progress throttle), sched.c (the worker and the schedule),
 * zap.c (authentication). Everything here belongs to the reactor thread. */
#ifndef LATHE_LATHED_H
#define LATHE_LATHED_H

#include <limits.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "common/proto.h"
#include "daemon/store.h"
#include "jobs/kind.h"

#define LATHED_VERSION LATHE_VERSION
#define MAX_ROUTING_ID 255
#define MAX_WATCHERS 4096
/* At most this many progress events per second per job are stored and sent; the last one is always kept. */
#define PROGRESS_EVERY_MS 100
/* Messages drained from one socket per loop turn (one store transaction covers the turn). */
#define BATCH 256
/* Work one loop turn may take from the client sockets before it commits and sends: a request costs one unit plus
 * one per KiB of its reply, and the turn also ends after TURN_MS. libzmq hands out the peers' messages in turn, so
 * a client pipelining thousands of requests delays another's reply by at most about one turn. */
#define TURN_WORK 256
#define TURN_MS 50
/* Events returned by one `events` reply (the client asks again for the rest). */
#define EVENTS_PAGE 1000
/* Jobs per `list` reply at most (a job object is well under 1 KiB without its parameters and result). */
#define LIST_PAGE 500
/* `show` leaves out parameters or a result larger than this (saying how large), so that its reply always fits. */
#define SHOW_PART_MAX (256u << 10)

/* A client: the socket it came in on (0 ipc, 1 tcp) and its ROUTER routing id. */
typedef struct peer {
  int sock;
  uint8_t id[MAX_ROUTING_ID];
  uint8_t id_n;
} peer_t;

/* A client following a job's events. */
typedef struct watcher {
  peer_t peer;
  int64_t job;
  int64_t seen_mono; /* the last follow request of the peer for the job, or event delivered to it */
} watcher_t;

/* The default of --watch-lease-ms: a watch lapses this long after its peer last asked to follow or was sent an
 * event, so a client gone without a word (its job quiet) leaves the table. Clients ask again every second while
 * idle. */
#define WATCH_LEASE_MS 30000

/* A message waiting for the turn's commit before it goes out. */
typedef struct outmsg {
  void *sock;
  uint8_t id[MAX_ROUTING_ID];
  uint8_t id_n;
  bool is_reply;  /* a reply to a request: turned into an `internal` error if the commit fails */
  bool is_worker; /* a command to the worker: dropped if the commit fails */
  uint64_t rid;
  char *data;
  size_t n;
} outmsg_t;

typedef enum worker_state { W_DOWN, W_STARTING, W_IDLE, W_BUSY } worker_state_t;

/* Why the running job is being stopped. */
typedef enum stop_req { STOP_NONE, STOP_CANCEL, STOP_SHUTDOWN } stop_req_t;

/* One GPU slot: its worker process and the job running on it. lathed runs one per device (--devices). */
/* Bytes of the worker's run message besides the parameters: the job's folder (at most PATH_MAX), its kind and
 * the keys. A job's parameters take at most PROTO_MAX_MSG less this. */
#define RUN_MSG_RESERVE (PATH_MAX + 512)

/* --allow-path entries at most. */
#define MAX_ALLOW_PATHS 64

/* A TCP client must finish its CURVE handshake within this (libzmq's default is 30 s). */
#define TCP_HANDSHAKE_MS 5000

/* Workers (GPU slots) at most. */
#define MAX_SLOTS 16

typedef struct slot {
  int ix;            /* its index in d->slots */
  char want[72];     /* the device its worker opens: an index or UUID ("": the worker's own choice) */
  char uuid[40];     /* want's UUID when the device listing gave one ("" otherwise) */
  char index[12];    /* want's index when the device listing gave one ("" otherwise) */
  char name[128];    /* want's name from the listing ("" otherwise) */
  int64_t mib;       /* want's device-local memory from the listing (0: unknown) */
  int64_t dev_index; /* the index of the device the worker has open, -1 when none */
  worker_state_t state;
  pid_t pid;
  int64_t gen; /* the worker's generation (unique across slots, from d->gen); its routing id is "w<gen>" */
  int64_t started_mono, last_beat_mono, backoff_until_mono;
  int crash_streak; /* spawns that died before becoming ready */
  int64_t restarts;
  char device[256];
  char last_exit[160];   /* how the previous worker ended */
  char kill_reason[128]; /* why we killed it ("" if we did not) */
  char cancel_by[64];    /* who cancelled the running job */
  int64_t job;           /* running job id, 0 when none */
  int64_t lent_to;       /* an idle worker whose device a data-parallel job (tune-zo --devices) uses, 0 when none */
  bool job_started;      /* the worker said it started job */
  int64_t start_deadline_mono;
  stop_req_t stop;
  int64_t stop_deadline_mono;
  /* progress throttle for the running job */
  int64_t progress_last_mono;
  char *progress_pending;        /* msgpack data of a held-back progress event (owned) */
  int64_t prog_step, prog_total; /* the running job's latest progress (0, 0 before any) */
  char prog_unit[16];
  size_t progress_pending_n;
  /* A Slurm slot (d->remote, slurm.c): one job's one-shot worker in a Slurm batch job. */
  bool remote;
  char slurm_id[24];     /* Slurm's job id ("" before sbatch answered) */
  char slurm_state[24];  /* the last state Slurm gave (PENDING, RUNNING, ...) */
  char slurm_reason[64]; /* Slurm's reason with it (Priority, Resources, None, ...) */
  char node[64];         /* the node it runs on ("" before it starts) */
  char pub[41];          /* the worker's CURVE public key, issued for this job alone */
  char *run_msg;         /* the run command, sent when the worker says ready (owned) */
  size_t run_msg_n;
  int64_t ended_mono; /* when Slurm first said the batch job ended (0: not yet) */
  bool scancelled;    /* scancel was run for it */
  bool signalled;     /* the worker got a stop signal from Slurm (scancel, time limit, preemption) */
} slot_t;

/* Slurm jobs followed at once at most (more wait in the queue). */
#define MAX_REMOTE 64

typedef struct opts {
  char socket[108];
  bool socket_explicit; /* --socket or LATHE_SOCKET: the folder need not be private */
  char home[PATH_MAX];
  char tcp[256]; /* "" when TCP is off */
  char curve_allow[PATH_MAX];
  char worker_path[PATH_MAX];
  int64_t max_queue;
  int64_t cancel_grace_ms;
  int64_t heartbeat_timeout_ms;
  int64_t start_timeout_ms; /* a job handed to the worker must be started within this */
  int64_t watch_lease_ms;   /* see WATCH_LEASE_MS */
  int64_t max_tcp;          /* TCP connections open at once (0: from the descriptor limit) */
  /* --allow-path NAME=DIR: the folders (real paths) the jobs of TCP key NAME may read and write under */
  struct allow_path {
    char key[64];
    char dir[PATH_MAX];
  } allow[MAX_ALLOW_PATHS];
  int n_allow;
  int64_t max_attempts;
  int64_t keep_alive_s;
  char devices[512]; /* --devices: comma-separated device selectors, one worker each ("": one per device found) */
  int64_t keep_finished_ms; /* --keep-finished: finished jobs are removed this long after they end (0: kept) */
  char executor[8];         /* --executor: where a job that names none runs, "local" or "slurm" */
  char slurm_listen[256];   /* --slurm-listen: where Slurm jobs' workers connect (default tcp://0.0.0.0:*) */
  char slurm_host[256];     /* --slurm-host: the name the nodes reach this machine by (default its hostname) */
  int64_t slurm_poll_ms;    /* --slurm-poll-ms: how often Slurm is asked about the jobs it runs for us */
} opts_t;

typedef struct daemon {
  opts_t o;
  void *ctx, *zap, *ipc, *tcp, *wsock;
  int sigfd;
  char worker_endpoint[PATH_MAX + 8];
  store_t *store;
  slot_t slots[MAX_SLOTS];
  int n_slots;
  int64_t gen; /* worker generations handed out */
  watcher_t *watchers;
  size_t n_watchers;
  outmsg_t *out;
  size_t n_out, cap_out;
  bool stopping; /* SIGTERM or a shutdown request: accept nothing new, wind down */
  bool done;     /* leave the loop */
  int64_t started_ms;
  int64_t auth_denied, requests, rejected;
  int64_t turn_work; /* units of work this loop turn (TURN_WORK) */
  /* TCP before authentication: a monitor counts open connections; past the cap new ones are shut at once. */
  void *tcp_mon;    /* PAIR reading the TCP socket's monitor events */
  int64_t tcp_open; /* TCP connections open now */
  int64_t tcp_shed; /* connections shut for being over the cap */
  /* Why the store cannot be written ("" while it can): a commit failed, so lathed serves reads, refuses writes with
   * `read_only`, starts no job, and tries a write every STORE_RETRY_MS until one commits. */
  char store_fault[384];
  int64_t store_retry_mono;
  int64_t prune_due_mono; /* the next retention pass (--keep-finished) */
  /* The Slurm executor (slurm.c) */
  char slurm_missing[256];           /* why Slurm cannot be used ("" when sbatch answered at start) */
  char slurm_version[64];            /* what `sbatch --version` said */
  void *wtcp;                        /* ROUTER for Slurm jobs' workers (CURVE), bound at the first Slurm job */
  char wtcp_connect[320];            /* the endpoint those workers connect to */
  char slurm_pub[41], slurm_sec[41]; /* the daemon's CURVE key pair for wtcp, made at start, never stored */
  slot_t remote[MAX_REMOTE];         /* the Slurm jobs being followed */
  int n_remote;
  int64_t slurm_poll_mono; /* the next time Slurm is asked */
} daemon_t;

/* A retention pass runs this often (and again at once while a pass leaves jobs to remove). */
#define RETENTION_EVERY_MS 600000

/* How often a read-only daemon tries to write its store again. */
#define STORE_RETRY_MS 2000

/* outbox.c: the outbox and the log. Queues msg (taking ownership of data) for sock/peer after this turn's
 * commit. */
void out_push(daemon_t *d, void *sock, const uint8_t *id, size_t id_n, char *data, size_t n, bool is_reply,
              uint64_t rid);
/* Queues the writer's bytes as a reply/push to a client peer. */
void out_peer(daemon_t *d, const peer_t *p, mpw_t *w, bool is_reply, uint64_t rid);
/* The ROUTER socket of peer p. */
void *peer_sock(daemon_t *d, const peer_t *p);
/* Sends everything queued this turn (after the commit). A client that is gone loses its watches. */
void out_flush(daemon_t *d);
/* After a failed commit: queued replies become `internal` errors, everything else is dropped; then flushes. */
void out_fail(daemon_t *d, const char *why);
/* Logs a line to stderr with a timestamp. */
void dlog(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* requests.c: handles one client request (decoded or not) and queues the reply. */
void requests_handle(daemon_t *d, const peer_t *p, const char *owner, const void *buf, size_t n);

/* Finished jobs removed by one `prune` request or one retention pass at most. */
#define PRUNE_PAGE 100
/* Removes up to PRUNE_PAGE finished jobs that ended before cutoff_ms (of one owner; NULL: any), rows and folders,
 * in the open transaction; *more says whether others remain. Returns how many, or a negative status. */
int64_t jobs_prune(daemon_t *d, int64_t cutoff_ms, const char *owner, bool *more, lt_err_t *err);

/* How long a run of lathe-worker as a tool (worker_tool) may take before it is killed. */
#define WORKER_TOOL_MS 30000

/* preflight.c: runs program path (a name is looked up on PATH) with argv (NULL-terminated) in a process of its own
 * and collects its stdout (and stderr with err_too) into out (cap bytes, NUL-terminated) for at most limit_ms, then
 * kills it (*timed_out). Returns its wait status, or -1 when it could not be started (errno says why). */
int run_tool(const char *path, const char *const *argv, bool err_too, int64_t limit_ms, char *out, size_t cap,
             bool *timed_out);

/* preflight.c: runs `lathe-worker ARGS` (args NULL-terminated, at most 14) in a process of its own and collects its
 * stdout into out (cap bytes, NUL-terminated) for at most WORKER_TOOL_MS, then kills it (*timed_out). Returns its wait
 * status, or -1 when it could not be started (errno says why). The wait holds the daemon's loop: the tools answer
 * within a second (a tokenizer check, a device listing). */
int worker_tool(const daemon_t *d, const char *const *args, char *out, size_t cap, bool *timed_out);

/* preflight.c: the submit-time file checks of kind k on its normalised params: every input path exists, the
 * output is none of them and, when it exists and is not empty, is written into only with force; for a TCP key
 * (owner "key:NAME"), every path lies under a folder --allow-path gives NAME; then kind k's own (kind_files). False
 * with e naming the field when one fails. */
bool preflight_files(daemon_t *d, const kind_t *k, const msgpack_object *params, const char *owner, proto_err_t *e);

/* events.c */
/* Appends an event (data: a msgpack map) to job id and queues it for the job's watchers. */
lt_status_t ev_emit(daemon_t *d, int64_t job, const char *type, const void *data, size_t n, lt_err_t *err);
/* Moves job j to state `to` with a reason: updates timestamps, writes the row durably, emits a state event. */
lt_status_t ev_transition(daemon_t *d, store_job_t *j, job_state_t to, const char *reason, lt_err_t *err);
/* A progress event from the running job: stored and sent at most every PROGRESS_EVERY_MS; the last one held back
 * is flushed by ev_flush_progress() (timer, or before any other event of the job). */
lt_status_t ev_progress(daemon_t *d, slot_t *s, const void *data, size_t n, lt_err_t *err);
/* Writes out a held-back progress event (if any, and if due or force). */
lt_status_t ev_flush_progress(daemon_t *d, slot_t *s, bool force, lt_err_t *err);
/* Registers p as a watcher of job (idempotent). False when the table is full. */
bool watch_add(daemon_t *d, const peer_t *p, int64_t job);
/* Marks every watch of peer p as seen now (an event reached it). */
void watch_seen(daemon_t *d, const peer_t *p);
/* Drops the watches whose lease lapsed; returns the ms until the next one lapses (the lease when none). */
int64_t watch_expire(daemon_t *d);
/* Removes p's watch on job (job 0: all of p's watches). */
void watch_remove(daemon_t *d, const peer_t *p, int64_t job);
/* Writes one stored event as the wire's event object {job, seq, time, type, data}. */
void ev_write(mpw_t *w, const store_event_t *ev);

/* sched.c */
/* Fills d->slots from --devices, or one slot per device `lathe-worker --list-devices` finds (the non-CPU ones when
 * there are any; LATHE_DEVICE, when set, picks one), or one slot of the worker's own choice when none is listed.
 * False with err when --devices names a device the listing does not have. */
bool sched_slots(daemon_t *d, lt_err_t *err);
/* The slot running job id, or NULL. */
slot_t *sched_slot_of_job(daemon_t *d, int64_t id);
/* Whether some slot can run a job pinned to device `pin` (an index or UUID; "" any) that needs mib MiB (0: any). */
bool sched_device_known(const daemon_t *d, const char *pin, int64_t mib);
/* Starts a worker for every slot that has none and is not backing off. */
void sched_spawn(daemon_t *d);
/* Reaps exited children (SIGCHLD) and handles a dead worker. */
void sched_reap(daemon_t *d);
/* Handles one message from a worker socket; owner is the connection's ZAP user ("slurm:JOB" for a Slurm job's
 * worker, which may speak only for its own job). */
void sched_worker_msg(daemon_t *d, const uint8_t *id, size_t id_n, const char *owner, const void *buf, size_t n);
/* Timers: heartbeats, cancel grace, progress flush, restart backoff. Returns ms until the next deadline. */
int64_t sched_timers(daemon_t *d);
/* Hands each idle worker the next queued job it may run. */
void sched_dispatch(daemon_t *d);
/* Asks slot s's running job to stop (cancel or shutdown checkpoint) and arms the grace deadline. */
void sched_stop_running(daemon_t *d, slot_t *s, stop_req_t why);
/* Startup and after a failed commit: jobs the store shows running are re-queued or failed per their kind. */
void sched_recover(daemon_t *d, const char *why);
/* Tells every idle worker to close its device and exit (kills one still starting). */
void sched_tell_exit(daemon_t *d);
/* With --keep-finished, when due: removes up to PRUNE_PAGE jobs that finished longer ago than that. Returns ms
 * until the next pass (INT64_MAX without the option). */
int64_t sched_retention(daemon_t *d);
/* Kills slot s's worker (SIGKILL) if one runs; its exit is handled by sched_reap(). */
void sched_kill_worker(daemon_t *d, slot_t *s, const char *why);

/* The store failed to commit (why): everything the turn queued is undone, the worker is killed and the daemon is
 * read-only until store_retry() commits. */
void store_failed_commit(daemon_t *d, const char *why);
/* For a read-only daemon whose retry is due: writes a probe and recovers the jobs the store shows running; leaves
 * the read-only state when that commits. Returns ms until the next try (INT64_MAX when writable). */
int64_t store_retry(daemon_t *d);

/* sched.c, for slurm.c */
/* What becomes of job j whose run on slot s (NULL: none) was cut off (`how`): cancelled if a cancel was asked,
 * else re-queued or failed per its kind (a shutdown does not spend an attempt). */
void sched_interrupted(daemon_t *d, const slot_t *s, store_job_t *j, const char *how, bool shutdown);
/* Slot s's job lost its run (`how`): it is cancelled, re-queued or failed (sched_interrupted) and the slot's job
 * cleared. */
void sched_cut_off(daemon_t *d, slot_t *s, const char *how);
/* Sends slot s's worker the command to stop its job: cancel, or checkpoint (why STOP_SHUTDOWN). */
void sched_tell_stop(daemon_t *d, slot_t *s, stop_req_t why);
/* Clears slot s's job after it ended one way or another (and takes back the devices lent to it). */
void sched_slot_job_done(daemon_t *d, slot_t *s);
/* Queues msg for slot s's worker (sent after this turn's commit); takes the writer's bytes. */
void sched_to_worker(daemon_t *d, slot_t *s, mpw_t *w);
/* Moves queued job j to running and writes its run command into w (for a worker), with the n_lent device
 * selectors lent beside the worker's own. False when the job cannot run (it is failed with the reason, or the
 * transition could not be stored). */
bool sched_start_job(daemon_t *d, store_job_t *j, const char *const *lent, int n_lent, mpw_t *w);
/* Whether the local workers can ever give a job n devices at once (each with a device of its own to name). */
bool sched_devices_known(const daemon_t *d, int64_t n);
/* Loads into j the first queued job (priority, then age) for which fn(user, job) holds; false when there is none
 * (or the store failed, logged). */
bool sched_next_queued(daemon_t *d, bool (*fn)(void *user, const store_job_t *j), void *user, store_job_t *j);
/* Whether a job's parameters send it to Slurm (its `executor`, or the daemon's when it names none). */
bool sched_job_is_slurm(const daemon_t *d, const void *params, size_t n);
/* The same for parameters already parsed. */
bool sched_params_slurm(const daemon_t *d, const msgpack_object *params);

/* slurm.c: the Slurm executor. Each job sent to Slurm is an sbatch script running `lathe-worker --one-shot` on the
 * node Slurm picks; the worker connects back over TCP with CURVE under a key issued for that job alone. */
/* At start: whether Slurm's sbatch answers (sets d->slurm_missing when it does not); makes the CURVE key pair.
 * False with err only when --executor slurm was asked and Slurm is missing. */
bool slurm_init(daemon_t *d, lt_err_t *err);
/* Submit-time checks of the executor parameters (Slurm present, no local-only pins, no Slurm-only options for a
 * local job). False with e naming the field. */
bool slurm_preflight(daemon_t *d, const msgpack_object *params, proto_err_t *e);
/* Sends the queued Slurm jobs to Slurm (sbatch), up to MAX_REMOTE followed at once. */
void slurm_dispatch(daemon_t *d);
/* Polls Slurm for its jobs' states and handles heartbeats, start and stop deadlines. Returns ms until the next. */
int64_t slurm_timers(daemon_t *d);
/* Asks the Slurm job of slot s to stop: a cancel runs scancel; a shutdown asks the worker for a checkpoint (a job
 * still waiting in Slurm's queue is cancelled there and re-queued here). */
void slurm_stop(daemon_t *d, slot_t *s, stop_req_t why);
/* Asks every Slurm job to stop for a daemon shutdown. */
void slurm_shutdown(daemon_t *d);
/* The worker of slot s connected and said ready: it gets its run command. */
void slurm_ready(daemon_t *d, slot_t *s);
/* Forgets slot s after its job ended (the key is revoked; s is invalid afterwards). */
void slurm_release(daemon_t *d, slot_t *s);
/* Recovery of a job the store shows running: cancels the Slurm job it had, if any (its worker can no longer
 * report to this daemon). */
void slurm_recover(daemon_t *d, int64_t job);
/* The store failed to commit: every Slurm job is cancelled and forgotten (recovery re-queues their jobs). */
void slurm_drop_all(daemon_t *d);
/* ZAP for the Slurm worker socket: whether CURVE key (Z85) was issued to a followed job's worker; writes the user
 * name ("slurm:JOB") that the job's messages must then carry (sched_worker_msg checks it). */
bool slurm_key_ok(daemon_t *d, const char *key, char *user, size_t n);

/* zap.c: answers the ZAP requests waiting on d->zap. */
void zap_handle(daemon_t *d);
/* Checks the CURVE setup for TCP: an allow folder holding at least one key. */
lt_status_t zap_check_curve_dir(const char *dir, lt_err_t *err);

#endif
