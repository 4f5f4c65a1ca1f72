/* Distillation on imperfect data (KID): before a step, a share of the target tokens is replaced by the student's
 * own greedy predictions from one parallel forward pass over the true sequence, so training sees inputs with the
 * kind of errors inference makes; the labels stay the data's. The losses themselves (KD, ATKD) are train.c's
 * (train_set_distill). */
#ifndef LATHE_DISTILL_H
#define LATHE_DISTILL_H

#include <stdint.h>

#include "common/status.h"
#include "engine/model/train.h"

/* The number of target tokens KID masks out of `count`: ratio * count rounded to the nearest (halves up). */
uint32_t distill_kid_count(uint32_t count, double ratio);

/* Chooses which target tokens of a micro-batch KID masks: of the n_seq * (T - 1) mask positions that count (mask
 * 1), exactly distill_kid_count(count, ratio) get picked[i] = 1, drawn uniformly from (seed, step, micro) alone; the
 * rest 0. picked has n_seq * (T - 1) entries, caller-owned. Returns the number picked. */
uint32_t distill_kid_pick(uint64_t seed, uint64_t step, uint32_t micro, const uint8_t *mask, uint32_t n_seq, uint32_t T,
                          double ratio, uint8_t *picked);

/* KID's rewrite of one micro-batch: the student predicts every next token of ids (train_predict) and each picked
 * target ids[s * T + t + 1] (picked[s * (T - 1) + t] = 1) becomes the prediction. out gets the rewritten ids
 * (n_seq * T, caller-owned; ids stays the labels); *changed counts the picked tokens the student got wrong. */
lt_status_t distill_kid_rewrite(train_t *student, const int32_t *ids, const uint8_t *picked, uint32_t n_seq, uint32_t T,
                                int32_t *out, uint32_t *changed, lt_err_t *err);

#endif
