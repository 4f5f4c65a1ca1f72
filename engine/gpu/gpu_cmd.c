/* Command recording: dispatches in chunks, with barriers only where a dispatch depends on an earlier one. */
#include <stdlib.h>
#include <string.h>

#include "engine/gpu/gpu_internal.h"

#define MAX_BINDS 16
#define TEXEL_BINDS 6 /* texel bindings of one dispatch, at most */
#define MAX_TRACK 256

/* A command buffer in flight, with the descriptor pool its dispatches used. */
typedef struct chunk {
  VkCommandBuffer cb;
  VkDescriptorPool dpool;
  VkFence fence;
  uint32_t cap;        /* dispatches the descriptor pool was sized for (the chunk size when it was made) */
  VkBufferView *views; /* texel views made for this chunk's dispatches only, destroyed with it */
  uint32_t n_views, cap_views;
  struct chunk *next;
} chunk_t;

typedef struct track {
  VkBuffer buf;
  uint64_t off, end;
} track_t;

struct gpu_cmd {
  gpu_t *g;
  chunk_t *cur;                                /* being recorded */
  chunk_t *submitted;                          /* in flight, newest first */
  uint32_t in_chunk;                           /* dispatches recorded into cur */
  track_t writes[MAX_TRACK], reads[MAX_TRACK]; /* since the last barrier */
  uint32_t n_writes, n_reads;
  gpu_buf_t **scratch; /* grows as ops ask for scratch space */
  uint32_t n_scratch, cap_scratch;
};

static lt_status_t chunk_new(gpu_cmd_t *c, lt_err_t *err) {
  gpu_t *g = c->g;
  lt_status_t st = LT_OK;
  chunk_t *k = calloc(1, sizeof *k);
  if (!k) return lt_fail(err, LT_E_NOMEM, "out of memory");
  k->cap = g->chunk;
  VkCommandBufferAllocateInfo ai = {.sType = VK_STRUCTURE_TYPE_COMMAND_BUFFER_ALLOCATE_INFO,
                                    .commandPool = g->pool,
                                    .level = VK_COMMAND_BUFFER_LEVEL_PRIMARY,
                                    .commandBufferCount = 1};
  VK_TRY(vkAllocateCommandBuffers(g->dev, &ai, &k->cb));
  /* Storage buffers for every binding, and uniform texel buffers for at most TEXEL_BINDS of a dispatch's. */
  VkDescriptorPoolSize ps[2] = {
      {.type = VK_DESCRIPTOR_TYPE_STORAGE_BUFFER, .descriptorCount = k->cap * MAX_BINDS},
      {.type = VK_DESCRIPTOR_TYPE_UNIFORM_TEXEL_BUFFER, .descriptorCount = k->cap * TEXEL_BINDS}};
  VkDescriptorPoolCreateInfo pi = {
      .sType = VK_STRUCTURE_TYPE_DESCRIPTOR_POOL_CREATE_INFO, .maxSets = k->cap, .poolSizeCount = 2, .pPoolSizes = ps};
  VK_TRY(vkCreateDescriptorPool(g->dev, &pi, NULL, &k->dpool));
  VkFenceCreateInfo fi = {.sType = VK_STRUCTURE_TYPE_FENCE_CREATE_INFO};
  VK_TRY(vkCreateFence(g->dev, &fi, NULL, &k->fence));
  VkCommandBufferBeginInfo bi = {.sType = VK_STRUCTURE_TYPE_COMMAND_BUFFER_BEGIN_INFO,
                                 .flags = VK_COMMAND_BUFFER_USAGE_ONE_TIME_SUBMIT_BIT};
  VK_TRY(vkBeginCommandBuffer(k->cb, &bi));
out:
  if (st != LT_OK) {
    if (k->fence) vkDestroyFence(g->dev, k->fence, NULL);
    if (k->dpool) vkDestroyDescriptorPool(g->dev, k->dpool, NULL);
    if (k->cb) vkFreeCommandBuffers(g->dev, g->pool, 1, &k->cb);
    free(k);
    return st;
  }
  c->cur = k;
  c->in_chunk = 0;
  return LT_OK;
}

static void chunk_free(gpu_t *g, chunk_t *k) {
  for (uint32_t i = 0; i < k->n_views; i++) vkDestroyBufferView(g->dev, k->views[i], NULL);
  free(k->views);
  vkDestroyFence(g->dev, k->fence, NULL);
  vkDestroyDescriptorPool(g->dev, k->dpool, NULL);
  vkFreeCommandBuffers(g->dev, g->pool, 1, &k->cb);
  free(k);
}

/* Ends and submits the current chunk (with a final barrier that makes shader writes visible to the host). */
static lt_status_t chunk_submit(gpu_cmd_t *c, lt_err_t *err) {
  gpu_t *g = c->g;
  lt_status_t st = LT_OK;
  chunk_t *k = c->cur;
  if (!k) return LT_OK;
  c->cur = NULL;
  VkMemoryBarrier mb = {.sType = VK_STRUCTURE_TYPE_MEMORY_BARRIER,
                        .srcAccessMask = VK_ACCESS_SHADER_WRITE_BIT | VK_ACCESS_TRANSFER_WRITE_BIT,
                        .dstAccessMask = VK_ACCESS_HOST_READ_BIT};
  vkCmdPipelineBarrier(k->cb, VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT | VK_PIPELINE_STAGE_TRANSFER_BIT,
                       VK_PIPELINE_STAGE_HOST_BIT, 0, 1, &mb, 0, NULL, 0, NULL);
  k->next = c->submitted;
  c->submitted = k;
  VK_TRY(vkEndCommandBuffer(k->cb));
  VkSubmitInfo si = {.sType = VK_STRUCTURE_TYPE_SUBMIT_INFO, .commandBufferCount = 1, .pCommandBuffers = &k->cb};
  VK_TRY(vkQueueSubmit(g->queue, 1, &si, k->fence));
  g->stats.submits++;
out:
  if (st != LT_OK) {
    /* Not submitted: make sure finish() does not wait on its fence. */
    c->submitted = k->next;
    chunk_free(g, k);
  }
  return st;
}

/* Waits for and frees every submitted chunk; returns the first failure. */
static lt_status_t wait_all(gpu_cmd_t *c, lt_err_t *err) {
  gpu_t *g = c->g;
  lt_status_t st = LT_OK;
  for (chunk_t *k = c->submitted, *nx; k; k = nx) {
    nx = k->next;
    VkResult r = vkWaitForFences(g->dev, 1, &k->fence, VK_TRUE, UINT64_MAX);
    if (r != VK_SUCCESS && st == LT_OK) st = gpu_vk_fail(err, r, "vkWaitForFences", __FILE__, __LINE__);
    chunk_free(g, k);
  }
  c->submitted = NULL;
  return st;
}

gpu_cmd_t *gpu_cmd_begin(gpu_t *g, lt_err_t *err) {
  gpu_cmd_t *c = calloc(1, sizeof *c);
  if (!c) {
    lt_fail(err, LT_E_NOMEM, "out of memory");
    return NULL;
  }
  c->g = g;
  if (chunk_new(c, err) != LT_OK) {
    free(c);
    return NULL;
  }
  return c;
}

gpu_t *gpu_cmd_gpu(const gpu_cmd_t *c) { return c->g; }

static bool overlaps(const track_t *set, uint32_t n, const track_t *t) {
  for (uint32_t i = 0; i < n; i++)
    if (set[i].buf == t->buf && set[i].off < t->end && t->off < set[i].end) return true;
  return false;
}

/* Inserts a barrier when any access conflicts with earlier un-barriered accesses, then records the accesses. */
static void order(gpu_cmd_t *c, const track_t *acc, const bool *write, uint32_t n) {
  bool need = false;
  for (uint32_t i = 0; i < n && !need; i++)
    need = overlaps(c->writes, c->n_writes, &acc[i]) || (write[i] && overlaps(c->reads, c->n_reads, &acc[i]));
  need = need || c->n_writes + n > MAX_TRACK || c->n_reads + n > MAX_TRACK;
  if (need) {
    VkMemoryBarrier mb = {.sType = VK_STRUCTURE_TYPE_MEMORY_BARRIER,
                          .srcAccessMask = VK_ACCESS_SHADER_WRITE_BIT | VK_ACCESS_TRANSFER_WRITE_BIT,
                          .dstAccessMask = VK_ACCESS_SHADER_READ_BIT | VK_ACCESS_SHADER_WRITE_BIT |
                                           VK_ACCESS_TRANSFER_READ_BIT | VK_ACCESS_TRANSFER_WRITE_BIT};
    VkPipelineStageFlags stages = VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT | VK_PIPELINE_STAGE_TRANSFER_BIT;
    vkCmdPipelineBarrier(c->cur->cb, stages, stages, 0, 1, &mb, 0, NULL, 0, NULL);
    c->g->stats.barriers++;
    c->n_writes = c->n_reads = 0;
  }
  for (uint32_t i = 0; i < n; i++) {
    if (write[i])
      c->writes[c->n_writes++] = acc[i];
    else
      c->reads[c->n_reads++] = acc[i];
  }
}

static lt_status_t next_slot(gpu_cmd_t *c, lt_err_t *err) {
  if (c->in_chunk < c->cur->cap) return LT_OK;
  lt_status_t st = chunk_submit(c, err);
  if (st == LT_OK) st = chunk_new(c, err);
  return st;
}

/* Hands n texel views to chunk k, which destroys them once its work is done. */
static lt_status_t chunk_keep_views(chunk_t *k, const VkBufferView *v, uint32_t n, lt_err_t *err) {
  if (k->n_views + n > k->cap_views) {
    uint32_t cap = k->cap_views ? 2 * k->cap_views : 16;
    while (cap < k->n_views + n) cap *= 2;
    VkBufferView *grown = realloc(k->views, cap * sizeof *grown);
    if (!grown) return lt_fail(err, LT_E_NOMEM, "out of memory");
    k->views = grown, k->cap_views = cap;
  }
  memcpy(k->views + k->n_views, v, n * sizeof *v);
  k->n_views += n;
  return LT_OK;
}

/* Texel views a buffer keeps for later dispatches; past that many distinct ranges (offsets that move from call to
 * call, such as a mixture-of-experts layer's rows per expert) a view lives only as long as its chunk. */
#define TEXEL_VIEWS_KEPT 32

/* The texel view of binding b: one the buffer keeps (per offset, range and format), or a new one that *transient
 * says the caller must hand to the chunk that records the dispatch. */
static lt_status_t texel_view(gpu_t *g, const gpu_bind_t *b, VkBufferView *out, bool *transient, lt_err_t *err) {
  lt_status_t st = LT_OK;
  gpu_buf_t *buf = b->buf;
  uint32_t ts = gpu_texel_size(b->texel);
  if (!gpu_texel_readable(&g->caps, b->texel))
    return lt_fail(err, LT_E_UNSUPPORTED, "texel format %d is not one %s reads as a uniform texel buffer",
                   (int)b->texel, g->caps.name);
  if (!b->range || b->range % ts || b->off % g->caps.min_texel_align || b->off + b->range > buf->size ||
      b->range / ts > g->caps.max_texels)
    return lt_fail(err, LT_E_INVALID,
                   "texel binding [%llu, +%llu) of a %llu-byte buffer: want whole %u-byte texels, at most %llu, at an "
                   "offset aligned to %llu",
                   (unsigned long long)b->off, (unsigned long long)b->range, (unsigned long long)buf->size, ts,
                   (unsigned long long)g->caps.max_texels, (unsigned long long)g->caps.min_texel_align);
  for (uint32_t i = 0; i < buf->n_views; i++)
    if (buf->views[i].off == b->off && buf->views[i].range == b->range && buf->views[i].fmt == b->texel) {
      *out = buf->views[i].view;
      return LT_OK;
    }
  VkBufferViewCreateInfo vi = {.sType = VK_STRUCTURE_TYPE_BUFFER_VIEW_CREATE_INFO,
                               .buffer = buf->buf,
                               .format = gpu_texel_vk_format(b->texel),
                               .offset = b->off,
                               .range = b->range};
  VkBufferView v;
  VK_TRY(vkCreateBufferView(g->dev, &vi, NULL, &v));
  *out = v;
  if ((*transient = buf->n_views >= TEXEL_VIEWS_KEPT)) return LT_OK;
  /* Kept until the buffer is destroyed (a recorded dispatch may still use it). */
  struct gpu_texel_view *grown = realloc(buf->views, (buf->n_views + 1) * sizeof *grown);
  if (!grown) {
    vkDestroyBufferView(g->dev, v, NULL);
    return lt_fail(err, LT_E_NOMEM, "out of memory");
  }
  buf->views = grown;
  buf->views[buf->n_views++] = (struct gpu_texel_view){b->off, b->range, b->texel, v};
out:
  return st;
}

lt_status_t gpu_cmd_dispatch(gpu_cmd_t *c, gpu_pipeline_t *p, const gpu_bind_t *binds, uint32_t n_binds,
                             const void *push, uint32_t push_size, uint32_t gx, uint32_t gy, uint32_t gz,
                             lt_err_t *err) {
  gpu_t *g = c->g;
  lt_status_t st = LT_OK;
  if (!c->cur) return lt_fail(err, LT_E_INVALID, "recorder failed earlier; abort it");
  if (n_binds != p->n_bindings)
    return lt_fail(err, LT_E_INVALID, "dispatch has %u bindings, the pipeline %u", n_binds, p->n_bindings);
  if (push_size != p->push_size)
    return lt_fail(err, LT_E_INVALID, "dispatch has %u bytes of push constants, the pipeline %u", push_size,
                   p->push_size);
  if (gx == 0 || gy == 0 || gz == 0) return LT_OK;
  if (gx > g->caps.max_wg_count[0] || gy > g->caps.max_wg_count[1] || gz > g->caps.max_wg_count[2])
    return lt_fail(err, LT_E_LIMIT, "dispatch of %ux%ux%u workgroups exceeds the device limit %ux%ux%u", gx, gy, gz,
                   g->caps.max_wg_count[0], g->caps.max_wg_count[1], g->caps.max_wg_count[2]);
  track_t acc[MAX_BINDS];
  bool wr[MAX_BINDS];
  VkDescriptorBufferInfo bi[MAX_BINDS];
  VkBufferView tv[MAX_BINDS];
  VkWriteDescriptorSet ws[MAX_BINDS];
  uint32_t n_texel = 0, n_transient = 0;
  VkBufferView fresh[TEXEL_BINDS]; /* views of this dispatch alone, handed to the chunk that records it */
  for (uint32_t i = 0; i < n_binds; i++) {
    const gpu_bind_t *b = &binds[i];
    if (!b->buf) return lt_fail(err, LT_E_INVALID, "binding %u has no buffer", i);
    bool texel = (p->texel_mask >> i) & 1;
    if (texel != (b->texel != GPU_TEXEL_NONE))
      return lt_fail(err, LT_E_INVALID, "binding %u: the pipeline declares %s, the dispatch binds %s", i,
                     texel ? "a texel buffer" : "a storage buffer", b->texel ? "a texel buffer" : "a storage buffer");
    if (texel) {
      /* Its view is made below, once every binding has passed. */
      if (++n_texel > TEXEL_BINDS) return lt_fail(err, LT_E_INVALID, "more than %d texel bindings", TEXEL_BINDS);
      acc[i] = (track_t){b->buf->buf, b->off, b->off + b->range};
      wr[i] = false;
      continue;
    }
    uint64_t range = b->range ? b->range : (b->off < b->buf->size ? b->buf->size - b->off : 0);
    if (b->off >= b->buf->size || range > b->buf->size - b->off)
      return lt_fail(err, LT_E_INVALID, "binding %u: range [%llu, +%llu) is outside a %llu-byte buffer", i,
                     (unsigned long long)b->off, (unsigned long long)range, (unsigned long long)b->buf->size);
    if (b->off % g->caps.min_storage_align)
      return lt_fail(err, LT_E_INVALID,
                     "binding %u: offset %llu is not a multiple of minStorageBufferOffsetAlignment %llu", i,
                     (unsigned long long)b->off, (unsigned long long)g->caps.min_storage_align);
    if (range > g->caps.max_storage_range)
      return lt_fail(err, LT_E_LIMIT, "binding %u: range of %llu bytes exceeds maxStorageBufferRange %llu", i,
                     (unsigned long long)range, (unsigned long long)g->caps.max_storage_range);
    acc[i] = (track_t){b->buf->buf, b->off, b->off + range};
    wr[i] = b->write;
    bi[i] = (VkDescriptorBufferInfo){b->buf->buf, b->off, range};
  }
  for (uint32_t i = 0; i < n_binds && st == LT_OK; i++) {
    bool transient = false;
    if ((p->texel_mask >> i) & 1 && (st = texel_view(g, &binds[i], &tv[i], &transient, err)) == LT_OK && transient)
      fresh[n_transient++] = tv[i];
  }
  if (st == LT_OK && (st = next_slot(c, err)) == LT_OK && n_transient)
    st = chunk_keep_views(c->cur, fresh, n_transient, err);
  if (st != LT_OK) {
    for (uint32_t j = 0; j < n_transient; j++) vkDestroyBufferView(g->dev, fresh[j], NULL);
    return st;
  }
  VkDescriptorSet set;
  VkDescriptorSetAllocateInfo ai = {.sType = VK_STRUCTURE_TYPE_DESCRIPTOR_SET_ALLOCATE_INFO,
                                    .descriptorPool = c->cur->dpool,
                                    .descriptorSetCount = 1,
                                    .pSetLayouts = &p->dsl};
  VK_TRY(vkAllocateDescriptorSets(g->dev, &ai, &set));
  for (uint32_t i = 0; i < n_binds; i++) {
    bool texel = (p->texel_mask >> i) & 1;
    ws[i] = (VkWriteDescriptorSet){.sType = VK_STRUCTURE_TYPE_WRITE_DESCRIPTOR_SET,
                                   .dstSet = set,
                                   .dstBinding = i,
                                   .descriptorCount = 1,
                                   .descriptorType = texel ? VK_DESCRIPTOR_TYPE_UNIFORM_TEXEL_BUFFER
                                                           : VK_DESCRIPTOR_TYPE_STORAGE_BUFFER,
                                   .pBufferInfo = texel ? NULL : &bi[i],
                                   .pTexelBufferView = texel ? &tv[i] : NULL};
  }
  vkUpdateDescriptorSets(g->dev, n_binds, ws, 0, NULL);
  order(c, acc, wr, n_binds);
  VkCommandBuffer cb = c->cur->cb;
  vkCmdBindPipeline(cb, VK_PIPELINE_BIND_POINT_COMPUTE, p->pipe);
  vkCmdBindDescriptorSets(cb, VK_PIPELINE_BIND_POINT_COMPUTE, p->layout, 0, 1, &set, 0, NULL);
  if (push_size) vkCmdPushConstants(cb, p->layout, VK_SHADER_STAGE_COMPUTE_BIT, 0, push_size, push);
  vkCmdDispatch(cb, gx, gy, gz);
  c->in_chunk++;
  g->stats.dispatches++;
out:
  return st;
}

lt_status_t gpu_cmd_copy(gpu_cmd_t *c, gpu_buf_t *src, uint64_t src_off, gpu_buf_t *dst, uint64_t dst_off, uint64_t n,
                         lt_err_t *err) {
  if (!c->cur) return lt_fail(err, LT_E_INVALID, "recorder failed earlier; abort it");
  if (src_off > src->size || n > src->size - src_off || dst_off > dst->size || n > dst->size - dst_off)
    return lt_fail(err, LT_E_INVALID, "copy of %llu bytes is outside its buffers", (unsigned long long)n);
  if (n == 0) return LT_OK;
  lt_status_t st = next_slot(c, err);
  if (st != LT_OK) return st;
  track_t acc[2] = {{src->buf, src_off, src_off + n}, {dst->buf, dst_off, dst_off + n}};
  bool wr[2] = {false, true};
  order(c, acc, wr, 2);
  VkBufferCopy r = {src_off, dst_off, n};
  vkCmdCopyBuffer(c->cur->cb, src->buf, dst->buf, 1, &r);
  c->in_chunk++;
  return LT_OK;
}

gpu_buf_t *gpu_cmd_scratch(gpu_cmd_t *c, uint64_t bytes, lt_err_t *err) {
  if (c->n_scratch == c->cap_scratch) {
    uint32_t cap = c->cap_scratch ? 2 * c->cap_scratch : 16;
    gpu_buf_t **grown = realloc(c->scratch, cap * sizeof *grown);
    if (!grown) {
      lt_fail(err, LT_E_NOMEM, "out of memory");
      return NULL;
    }
    c->scratch = grown;
    c->cap_scratch = cap;
  }
  gpu_buf_t *b = gpu_buf_new(c->g, bytes, err);
  if (b) c->scratch[c->n_scratch++] = b;
  return b;
}

static void free_scratch(gpu_cmd_t *c) {
  for (uint32_t i = 0; i < c->n_scratch; i++) gpu_buf_destroy(&c->scratch[i]);
  free(c->scratch);
  c->scratch = NULL;
  c->n_scratch = c->cap_scratch = 0;
}

lt_status_t gpu_cmd_finish(gpu_cmd_t **cp, lt_err_t *err) {
  gpu_cmd_t *c = *cp;
  lt_status_t st = chunk_submit(c, err);
  lt_status_t st2 = wait_all(c, st == LT_OK ? err : NULL);
  free_scratch(c);
  free(c);
  *cp = NULL;
  return st != LT_OK ? st : st2;
}

void gpu_cmd_abort(gpu_cmd_t **cp) {
  if (!cp || !*cp) return;
  gpu_cmd_t *c = *cp;
  if (c->cur) {
    vkEndCommandBuffer(c->cur->cb);
    chunk_free(c->g, c->cur);
  }
  wait_all(c, NULL);
  free_scratch(c);
  free(c);
  *cp = NULL;
}
