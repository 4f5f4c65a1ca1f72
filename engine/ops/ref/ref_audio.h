/* CPU reference of the speech features (engine/ops/ops_audio.c), in double precision. */
#ifndef LATHE_REF_AUDIO_H
#define LATHE_REF_AUDIO_H

#include "engine/ops/ops_audio.h"

/* y [n / hop][n_mels] = Whisper's normalised log-mel features of n samples x, computed naively: the centred,
 * reflected frames, a direct DFT in double, the filter bank of logmel_filters(), log10, the clamp and the
 * scaling of op_logmel(). n must pass logmel_check(). */
void ref_logmel(float *y, const float *x, uint64_t n, const logmel_shape_t *s);

/* cols [t_out, ch * k] = the conv1d windows of x [t_in, ch] (op_im2col's reference). */
void ref_im2col(float *cols, const float *x, uint32_t t_in, uint32_t ch, uint32_t k, uint32_t stride, uint32_t pad);

/* dx [t_in, ch] = dcols folded back (op_col2im's reference), overwritten. */
void ref_col2im(float *dx, const float *dcols, uint32_t t_in, uint32_t ch, uint32_t k, uint32_t stride, uint32_t pad);

#endif
