/* Authentication: over TCP only CURVE keys in the allow folder get in (and TCP without one is refused at
 * start); on the ipc socket only the daemon's own uid gets in, even when the socket file is open to all. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <errno.h>
#include <grp.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zmq.h>

#include "common/util.h"
#include "td.h"

static td_t t;

static void setup(void) { memset(&t, 0, sizeof t); }
static void teardown(void) { td_cleanup(&t); }

TestSuite(security, .init = setup, .fini = teardown, .timeout = 60);

/* Writes a CURVE key pair as DIR/NAME.key and DIR/NAME.pub. */
static void keypair(const char *dir, const char *name) {
  char pub[41], sec[41], path[256];
  cr_assert_eq(zmq_curve_keypair(pub, sec), 0);
  snprintf(path, sizeof path, "%s/%s.key", dir, name);
  cr_assert_eq(util_write_z85_key(path, sec, true, NULL), LT_OK);
  snprintf(path, sizeof path, "%s/%s.pub", dir, name);
  cr_assert_eq(util_write_z85_key(path, pub, false, NULL), LT_OK);
}

/* Pings the daemon at ep over CURVE with the given server key and client key; pe and *err (may be NULL) say why
 * when it fails. */
static lt_status_t tcp_ping(const char *ep, const char *server_pub, const char *key, proto_err_t *pe, lt_err_t *err) {
  lc_opts_t o = {.connect = ep, .server_key = server_pub, .client_key = key, .timeout_ms = 3000};
  lt_err_t own = {0};
  if (!err) err = &own;
  lc_t *c = lc_new(&o, err);
  cr_assert_not_null(c, "%s", err->msg);
  mpw_t w;
  lc_begin(c, &w, "ping");
  mp_doc_t *d = lc_call(c, &w, pe, err);
  lt_status_t st = d ? LT_OK : LT_E_IO;
  mp_doc_destroy(&d);
  lc_destroy(&c);
  return st;
}

/* Keys for alice (allowed) and mallory (not) under t.dir/keys, and a daemon on a TCP port of the system's choosing
 * with its extra arguments (NULL-ended, at most 4); fills the endpoint, the server's public key and both secret
 * key paths. */
static void tcp_daemon(const char *const *extra, char ep[64], char server_pub[160], char alice[128],
                       char mallory[128]) {
  char keys[96], allow[96];
  /* The folder first, to hold the keys before the daemon starts. */
  td_prepare(&t);
  snprintf(keys, sizeof keys, "%s/keys", t.dir);
  snprintf(allow, sizeof allow, "%s/allow", t.dir);
  util_mkdir_p(keys, 0700, NULL), util_mkdir_p(allow, 0700, NULL);
  keypair(keys, "alice"), keypair(keys, "mallory");
  char src[160], dst[160];
  snprintf(src, sizeof src, "%s/alice.pub", keys);
  snprintf(dst, sizeof dst, "%s/alice.pub", allow);
  char key[41];
  cr_assert_eq(util_read_z85_key(src, key, NULL), LT_OK);
  cr_assert_eq(util_write_z85_key(dst, key, false, NULL), LT_OK);
  const char *args[9] = {"--tcp", "tcp://127.0.0.1:*", "--curve-allow", allow, NULL};
  for (int i = 0; extra && extra[i] && i < 4; i++) args[4 + i] = extra[i];
  td_start(&t, args);
  /* The port the system picked, from the daemon's status. */
  lc_t *local = td_client(&t);
  mp_doc_t *st = td_status(local);
  cr_assert(mp_str_copy(mp_get(mp_doc_root(st), "tcp"), ep, 64) && strncmp(ep, "tcp://127.0.0.1:", 16) == 0);
  mp_doc_destroy(&st);
  lc_destroy(&local);
  snprintf(server_pub, 160, "%s/curve/server.pub", t.home);
  snprintf(alice, 128, "%s/alice.key", keys);
  snprintf(mallory, 128, "%s/mallory.key", keys);
}

Test(security, curve_known_key_accepted_unknown_refused) {
  char ep[64], server_pub[160], alice[128], mallory[128];
  tcp_daemon(NULL, ep, server_pub, alice, mallory);
  lc_t *local = td_client(&t);
  proto_err_t pe = {0};
  cr_assert_eq(tcp_ping(ep, server_pub, alice, &pe, NULL), LT_OK, "alice is allowed: %s", pe.msg);
  pe.code = P_OK;
  cr_assert_neq(tcp_ping(ep, server_pub, mallory, &pe, NULL), LT_OK, "mallory is not in the allow folder");
  cr_assert_eq(pe.code, P_DENIED, "the refusal is seen as such (got %s)", proto_code_str(pe.code));
  /* The wrong server key is not a refusal of the client's: the message says what broke. */
  char wrong_server[160];
  snprintf(wrong_server, sizeof wrong_server, "%s/keys/mallory.pub", t.dir);
  lt_err_t werr = {0};
  pe.code = P_OK;
  cr_assert_neq(tcp_ping(ep, wrong_server, alice, &pe, &werr), LT_OK);
  cr_assert_neq(pe.code, P_DENIED, "%s", werr.msg);
  cr_assert(!strstr(werr.msg, "authentication failed"), "%s", werr.msg);
  /* Alice's jobs are owned by her key's name. */
  lc_opts_t o = {.connect = ep, .server_key = server_pub, .client_key = alice};
  lc_t *c = lc_new(&o, NULL);
  int64_t id = lc_submit(c, "sleep", NULL, 0, NULL, 0, true, NULL, NULL, NULL);
  mp_doc_t *d = td_show(c, id);
  cr_assert(td_has(mp_get(mp_doc_root(d), "job"), "owner", "key:alice"));
  mp_doc_destroy(&d);
  lc_destroy(&c);
  d = td_status(local);
  cr_assert_geq(td_int(mp_doc_root(d), "auth_denied"), 1);
  mp_doc_destroy(&d);
  lc_destroy(&local);
}

Test(security, tcp_without_an_allow_folder_is_refused) {
  int rc = td_start_expect_exit(&t, (const char *const[]){"--tcp", "tcp://127.0.0.1:1", NULL}, 5000);
  cr_assert(rc > 0, "lathed must refuse TCP without --curve-allow (exit %d)", rc);
  char empty[96];
  snprintf(empty, sizeof empty, "%s/empty", t.dir);
  util_mkdir_p(empty, 0700, NULL);
  rc =
      td_start_expect_exit(&t, (const char *const[]){"--tcp", "tcp://127.0.0.1:1", "--curve-allow", empty, NULL}, 5000);
  cr_assert(rc > 0, "lathed must refuse TCP with no allowed key (exit %d)", rc);
}

/* In a child running as nobody: 0 if the daemon refused or never answered, 1 if it answered. */
/* Pings the daemon at sock as uid nobody with a bare ZeroMQ socket (not lc, whose own checks would refuse the
 * root-owned socket first: this is about the daemon's check). 1 when an answer came, 0 when none did. */
static int ping_as_nobody(const char *sock) {
  pid_t pid = fork();
  cr_assert(pid >= 0);
  if (pid == 0) {
    if (setgroups(0, NULL) != 0 || setgid(65534) != 0 || setuid(65534) != 0) _exit(2);
    void *ctx = zmq_ctx_new(), *s = zmq_socket(ctx, ZMQ_DEALER);
    int zero = 0, wait = 1500;
    zmq_setsockopt(s, ZMQ_LINGER, &zero, sizeof zero);
    zmq_setsockopt(s, ZMQ_RCVTIMEO, &wait, sizeof wait);
    char ep[256];
    snprintf(ep, sizeof ep, "ipc://%s", sock);
    if (zmq_connect(s, ep) != 0) _exit(0);
    mpw_t w;
    mpw_init(&w);
    mpw_map(&w);
    mpw_kint(&w, "v", PROTO_VERSION);
    mpw_kint(&w, "rid", 1);
    mpw_kstr(&w, "op", "ping");
    mpw_end(&w);
    zmq_send(s, w.sb.data, w.sb.size, 0);
    char buf[4096];
    _exit(zmq_recv(s, buf, sizeof buf, 0) > 0 ? 1 : 0);
  }
  int st;
  waitpid(pid, &st, 0);
  return WIFEXITED(st) ? WEXITSTATUS(st) : 100 + WTERMSIG(st);
}

/* The client trusts a socket only where another user cannot have put it: a folder others may write to without
 * the sticky bit is refused, and in a sticky one the socket must be there already; a socket another uid owns is
 * refused (checked as root, who can give it away). */
Test(security, the_client_refuses_a_socket_another_user_could_have_placed) {
  td_prepare(&t);
  char run[96], out[4096], cmd[512];
  snprintf(run, sizeof run, "%s/run", t.dir);
  util_mkdir_p(run, 0700, NULL);
  chmod(t.dir, 0755);
  td_start(&t, NULL);
  chmod(run, 0777);
  snprintf(cmd, sizeof cmd, "LATHE_SOCKET=%s %s/lathe --no-autostart ps 2>&1", t.sock, LATHE_BIN_DIR);
  int rc = td_shell(out, sizeof out, cmd);
  cr_assert_neq(rc, 0, "%s", out);
  cr_assert(strstr(out, "other users can write to the folder") && strstr(out, "use a private folder"), "%s", out);
  chmod(run, 01777); /* sticky, like /tmp: the daemon's own socket is safe there */
  cr_assert_eq(td_shell(out, sizeof out, cmd), 0, "%s", out);
  if (geteuid() == 0) {
    cr_assert_eq(chown(t.sock, 65534, 65534), 0);
    cr_assert_neq(td_shell(out, sizeof out, cmd), 0, "%s", out);
    cr_assert(strstr(out, "belongs to uid 65534, not to you") && strstr(out, "nothing was sent"), "%s", out);
  }
}

Test(security, other_uid_cannot_use_the_ipc_socket) {
  if (geteuid() != 0) cr_skip_test("needs root to run a client as another uid (nobody)");
  /* A socket folder open to everyone, so that only the ZAP handler stands in the way. */
  td_prepare(&t);
  char run[96];
  snprintf(run, sizeof run, "%s/run", t.dir);
  util_mkdir_p(run, 0755, NULL);
  chmod(t.dir, 0755), chmod(run, 0755);
  td_start(&t, NULL);
  chmod(t.sock, 0666);
  int got = ping_as_nobody(t.sock);
  cr_assert_eq(got, 0, "uid nobody got an answer (child status %d)", got);
  lc_t *c = td_client(&t);
  mp_doc_t *d = td_status(c);
  cr_assert_geq(td_int(mp_doc_root(d), "auth_denied"), 1, "the ZAP handler refused it");
  mp_doc_destroy(&d);
  lc_destroy(&c);
  /* And the normal setup: a private folder keeps other users from connecting at all. */
  chmod(run, 0700);
  cr_assert_eq(ping_as_nobody(t.sock), 0);
}

/* Raw TCP connections that never authenticate cannot exhaust the daemon's descriptors: past
 * --max-tcp-connections they are closed as they arrive, the rest are dropped after the handshake timeout, the ipc
 * socket keeps answering throughout, and an allowed key gets in once the flood has gone. The daemon also raised its
 * soft descriptor limit to the hard one. */
Test(security, a_flood_of_unauthenticated_tcp_connections_is_shed) {
  char ep[64], server_pub[160], alice[128], mallory[128];
  static const char *const extra[] = {"--max-tcp-connections", "32", NULL};
  tcp_daemon(extra, ep, server_pub, alice, mallory);
  enum { FLOOD = 300 };
  int fds[FLOOD];
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(strrchr(ep, ':') + 1))};
  inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
  for (int i = 0; i < FLOOD; i++) {
    fds[i] = socket(AF_INET, SOCK_STREAM, 0);
    cr_assert_geq(fds[i], 0);
    cr_assert_eq(connect(fds[i], (struct sockaddr *)&sa, sizeof sa), 0, "connection %d: %s", i, strerror(errno));
  }
  lc_t *local = td_client(&t);
  int64_t open = -1, shed = -1;
  /* Shed connections count as open until libzmq reports them closed: wait for both counts to settle. */
  for (int i = 0; i < 200 && (shed < FLOOD - 32 || open > 32); i++) {
    mp_doc_t *d = td_status(local);
    open = td_int(mp_doc_root(d), "tcp_open"), shed = td_int(mp_doc_root(d), "tcp_shed");
    mp_doc_destroy(&d);
    if (shed < FLOOD - 32 || open > 32) td_sleep_ms(50);
  }
  cr_assert_geq(shed, FLOOD - 32, "shed %lld, open %lld", (long long)shed, (long long)open);
  cr_assert_leq(open, 32);
  /* The unauthenticated ones left are dropped after the handshake timeout; then alice gets in. */
  int64_t left = open;
  for (int i = 0; i < 200 && left > 0; i++) {
    td_sleep_ms(50);
    mp_doc_t *d = td_status(local);
    left = td_int(mp_doc_root(d), "tcp_open");
    mp_doc_destroy(&d);
  }
  cr_assert_eq(left, 0, "connections that never authenticated are still open");
  proto_err_t pe = {0};
  cr_assert_eq(tcp_ping(ep, server_pub, alice, &pe, NULL), LT_OK, "alice after the flood: %s", pe.msg);
  for (int i = 0; i < FLOOD; i++) close(fds[i]);
  /* The soft descriptor limit was raised to the hard one. */
  char path[64], line[256];
  snprintf(path, sizeof path, "/proc/%d/limits", (int)t.pid);
  FILE *f = fopen(path, "r");
  cr_assert(f);
  unsigned long long soft = 0, hard = 0;
  while (fgets(line, sizeof line, f))
    if (sscanf(line, "Max open files %llu %llu", &soft, &hard) == 2) break;
  fclose(f);
  cr_assert(soft > 0 && soft == hard, "soft %llu, hard %llu", soft, hard);
  lc_destroy(&local);
}

/* A TCP key sees and acts on its own jobs only, cannot stop the daemon, and names paths only under the folders
 * --allow-path gives it; an error about a file never echoes the file's contents. */
Test(security, a_remote_key_acts_on_its_own_jobs_under_its_own_folders) {
  char ep[64], server_pub[160], alice[128], mallory[128], files[128], arg[160], cmd[PATH_MAX + 512], out[4096];
  td_prepare(&t);
  snprintf(files, sizeof files, "%s/alice-files", t.dir);
  util_mkdir_p(files, 0700, NULL);
  snprintf(arg, sizeof arg, "alice=%s", files);
  const char *extra[] = {"--allow-path", arg, NULL};
  tcp_daemon(extra, ep, server_pub, alice, mallory);
  lc_t *local = td_client(&t);
  int64_t mine = lc_submit(local, "sleep", NULL, 0, NULL, 0, true, NULL, NULL, NULL);
  cr_assert_gt(mine, 0);
  lc_opts_t o = {.connect = ep, .server_key = server_pub, .client_key = alice};
  lc_t *c = lc_new(&o, NULL);
  cr_assert(c);
  int64_t hers = lc_submit(c, "sleep", NULL, 0, NULL, 0, true, NULL, NULL, NULL);
  cr_assert_gt(hers, 0);
  proto_err_t pe = {0};
  const char *ops[] = {"cancel", "show", "remove", "result", "release"};
  for (size_t i = 0; i < sizeof ops / sizeof ops[0]; i++) {
    mp_doc_t *d = lc_call_id(c, ops[i], mine, &pe, NULL);
    cr_assert_null(d, "%s of another owner's job was allowed", ops[i]);
    cr_assert_eq(pe.code, P_DENIED, "%s: %s", ops[i], pe.msg);
  }
  mp_doc_t *d = lc_call_id(c, "show", hers, &pe, NULL);
  cr_assert(d, "%s", pe.msg);
  mp_doc_destroy(&d);
  mpw_t w;
  lc_begin(c, &w, "list");
  mpw_kbool(&w, "all", true);
  d = lc_call(c, &w, NULL, NULL);
  const msgpack_object *jobs = mp_get(mp_doc_root(d), "jobs");
  cr_assert_eq(jobs->via.array.size, 1);
  cr_assert_eq(td_int(&jobs->via.array.ptr[0], "id"), hers);
  mp_doc_destroy(&d);
  lc_begin(c, &w, "shutdown");
  cr_assert_null(lc_call(c, &w, &pe, NULL));
  cr_assert_eq(pe.code, P_DENIED, "%s", pe.msg);
  /* Paths: outside the folder refused (nothing read); inside, a file that is not JSONL fails the job without its
   * contents in the reason. */
  snprintf(cmd, sizeof cmd, "cp -r %s/models/lathe-kjv-llama %s/m && printf 'root:x:0:0:secret-line\\n' > %s/p.jsonl",
           LATHE_SOURCE_DIR, files, files);
  cr_assert_eq(td_shell(out, sizeof out, cmd), 0);
  const char *outside[] = {"model", LATHE_SOURCE_DIR "/models/lathe-kjv-llama", "data", "/etc/passwd", NULL};
  int64_t id = td_submit(c, "score", outside, NULL, NULL, NULL, NULL, &pe);
  cr_assert_leq(id, 0);
  cr_assert_eq(pe.code, P_DENIED, "%s", pe.msg);
  cr_assert(strstr(pe.msg, "params.model: ") && strstr(pe.msg, "--allow-path alice=DIR"), "%s", pe.msg);
  char model[200], data[200], passwd_data[] = "/etc/passwd";
  snprintf(model, sizeof model, "%s/m", files);
  snprintf(data, sizeof data, "%s/p.jsonl", files);
  const char *half[] = {"model", model, "data", passwd_data, NULL};
  cr_assert_leq(td_submit(c, "score", half, NULL, NULL, NULL, NULL, &pe), 0);
  cr_assert(strstr(pe.msg, "params.data: /etc/passwd is outside"), "%s", pe.msg);
  const char *inside[] = {"model", model, "data", data, NULL};
  id = td_submit(c, "score", inside, NULL, NULL, NULL, NULL, NULL);
  td_wait_state(c, id, "failed", 30000);
  d = td_show(c, id);
  char reason[400] = "";
  mp_str_copy(mp_get(mp_get(mp_doc_root(d), "job"), "reason"), reason, sizeof reason);
  mp_doc_destroy(&d);
  cr_assert(strstr(reason, "p.jsonl:1") && !strstr(reason, "root") && !strstr(reason, "secret"), "%s", reason);
  lc_destroy(&c);
  lc_destroy(&local);
}
