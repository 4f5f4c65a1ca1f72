/* The ZAP handler (RFC 27): decides every connection before libzmq lets it speak. ipc clients must run as the
 * daemon's uid (libzmq puts the peer's SO_PEERCRED uid, gid and pid in the address field: "localhost:UID:GID:PID");
 * the worker socket admits only the worker we spawned; TCP clients must present a CURVE key listed in the
 * allow folder; the Slurm workers' socket admits only the keys issued to the Slurm jobs being followed. */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zmq.h>

#include "common/util.h"
#include "daemon/lathed.h"

/* Reads uid and pid from a ZAP address of an ipc peer. False if it has no credentials. */
static bool peer_cred(const char *addr, long *uid, long *pid) {
  const char *c3 = strrchr(addr, ':');
  if (!c3) return false;
  const char *c2 = c3 - 1;
  while (c2 > addr && *c2 != ':') c2--;
  const char *c1 = c2 - 1;
  while (c1 > addr && *c1 != ':') c1--;
  if (*c1 != ':' || *c2 != ':' || c1 == c2) return false;
  char *end;
  *uid = strtol(c1 + 1, &end, 10);
  if (end != c2) return false;
  *pid = strtol(c3 + 1, &end, 10);
  return *end == '\0';
}

/* Looks for key (Z85) among the allow folder's *.pub files; writes the file's base name into name. */
static bool key_allowed(const char *dir, const char *key, char *name, size_t n) {
  DIR *dp = opendir(dir);
  if (!dp) return false;
  bool found = false;
  struct dirent *de;
  while (!found && (de = readdir(dp))) {
    size_t len = strlen(de->d_name);
    if (len < 5 || strcmp(de->d_name + len - 4, ".pub") != 0) continue;
    char path[PATH_MAX + 256], k[41];
    snprintf(path, sizeof path, "%s/%s", dir, de->d_name);
    if (util_read_z85_key(path, k, NULL) == LT_OK && strcmp(k, key) == 0) {
      snprintf(name, n, "%.*s", (int)(len - 4), de->d_name);
      found = true;
    }
  }
  closedir(dp);
  return found;
}

lt_status_t zap_check_curve_dir(const char *dir, lt_err_t *err) {
  DIR *dp = opendir(dir);
  if (!dp) return lt_fail(err, LT_E_IO, "cannot read the CURVE allow folder %s", dir);
  int keys = 0;
  struct dirent *de;
  while ((de = readdir(dp))) {
    size_t len = strlen(de->d_name);
    char path[PATH_MAX + 256], k[41];
    snprintf(path, sizeof path, "%s/%s", dir, de->d_name);
    if (len > 4 && strcmp(de->d_name + len - 4, ".pub") == 0 && util_read_z85_key(path, k, NULL) == LT_OK) keys++;
  }
  closedir(dp);
  if (!keys) return lt_fail(err, LT_E_INVALID, "no client keys (*.pub holding a Z85 key) in %s; TCP refused", dir);
  return LT_OK;
}

/* Receives one frame into buf (NUL-terminated, truncated to n-1); returns its full size or -1. */
static int frame(void *sock, char *buf, size_t n, bool *more) {
  zmq_msg_t m;
  zmq_msg_init(&m);
  int r = zmq_msg_recv(&m, sock, ZMQ_DONTWAIT);
  if (r >= 0) {
    size_t len = zmq_msg_size(&m) < n - 1 ? zmq_msg_size(&m) : n - 1;
    memcpy(buf, zmq_msg_data(&m), len);
    buf[len] = '\0';
    *more = zmq_msg_more(&m);
  }
  zmq_msg_close(&m);
  return r;
}

static void reply(void *sock, const char *reqid, size_t reqid_n, const char *code, const char *text, const char *user) {
  zmq_send(sock, "1.0", 3, ZMQ_SNDMORE);
  zmq_send(sock, reqid, reqid_n, ZMQ_SNDMORE);
  zmq_send(sock, code, strlen(code), ZMQ_SNDMORE);
  zmq_send(sock, text, strlen(text), ZMQ_SNDMORE);
  zmq_send(sock, user, strlen(user), ZMQ_SNDMORE);
  zmq_send(sock, "", 0, 0);
}

void zap_handle(daemon_t *d) {
  for (;;) {
    /* version, request id, domain, address, routing id, mechanism, credentials... */
    char f[7][256];
    int sizes[7] = {0};
    int nf = 0;
    bool more = true;
    while (more) {
      char scratch[256];
      int r = frame(d->zap, nf < 7 ? f[nf] : scratch, 256, &more);
      if (r < 0) {
        if (nf == 0) return;
        break;
      }
      if (nf < 7) sizes[nf] = r;
      nf++;
    }
    if (nf < 6) continue;
    const char *domain = f[2], *addr = f[3], *mech = f[5];
    char user[96] = "", why[512] = "";
    long uid = -1, pid = -1;
    bool ok = false;
    if (!strcmp(domain, "ipc") && !strcmp(mech, "NULL")) {
      ok = peer_cred(addr, &uid, &pid) && uid == (long)geteuid();
      snprintf(user, sizeof user, "uid:%ld", uid);
      if (!ok)
        snprintf(why, sizeof why, "ipc peer uid %ld (pid %ld) is not the daemon's uid %u", uid, pid,
                 (unsigned)geteuid());
    } else if (!strcmp(domain, "worker") && !strcmp(mech, "NULL")) {
      ok = peer_cred(addr, &uid, &pid) && uid == (long)geteuid();
      bool ours = false;
      for (int i = 0; i < d->n_slots; i++) ours |= pid == (long)d->slots[i].pid;
      ok = ok && ours;
      util_copy(user, "worker", sizeof user);
      if (!ok) snprintf(why, sizeof why, "worker socket: pid %ld is not our worker", pid);
    } else if (!strcmp(domain, "slurm") && !strcmp(mech, "CURVE") && nf >= 7 && sizes[6] == 32) {
      char key[41];
      zmq_z85_encode(key, (const uint8_t *)f[6], 32);
      ok = slurm_key_ok(d, key, user, sizeof user);
      if (!ok)
        snprintf(why, sizeof why, "Slurm worker socket: peer %.64s has key %s, issued to no job here", addr, key);
    } else if (!strcmp(domain, "tcp") && !strcmp(mech, "CURVE") && nf >= 7 && sizes[6] == 32) {
      char key[41], name[64];
      zmq_z85_encode(key, (const uint8_t *)f[6], 32);
      ok = key_allowed(d->o.curve_allow, key, name, sizeof name);
      snprintf(user, sizeof user, "key:%s", ok ? name : "?");
      if (!ok) snprintf(why, sizeof why, "tcp peer %.64s: CURVE key %s is not in %.200s", addr, key, d->o.curve_allow);
    } else {
      snprintf(why, sizeof why, "domain '%.32s' with mechanism %.16s is not accepted", domain, mech);
    }
    if (!ok) {
      d->auth_denied++;
      dlog("refused a connection: %s", why);
    }
    reply(d->zap, f[1], (size_t)(sizes[1] < 255 ? sizes[1] : 255), ok ? "200" : "400", ok ? "OK" : "denied",
          ok ? user : "");
  }
}
