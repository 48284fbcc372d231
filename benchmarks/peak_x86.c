/* Peak multiply-accumulate rates of one x86 core with AVX2 + FMA: the ceiling for int8 vs fp32.
 * Each loop keeps 12 independent accumulators busy; an empty asm after every step makes the compiler
 * recompute each multiply instead of hoisting it out of the loop. Built and run by bench_peak.py. */
#include <immintrin.h>
#include <stdio.h>
#include <time.h>

#define STEPS 400000000L
#define R12(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9) X(10) X(11)

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec * 1e-9;
}

int main(void) {
  /* fp32: vfmadd231ps, 8 multiply-adds each */
  __m256 x = _mm256_set1_ps(0.5f), y = _mm256_set1_ps(0.25f);
#define F_INIT(i) __m256 f##i = _mm256_set1_ps((float)i);
  R12(F_INIT)
  double t = now();
  for (long n = 0; n < STEPS / 12; n++) {
#define F_STEP(i) f##i = _mm256_fmadd_ps(x, y, f##i); __asm__ volatile("" : "+x"(x));
    R12(F_STEP)
  }
  double fp32 = STEPS * 8 / (now() - t) / 1e9;
  float fsum = 0;
#define F_SUM(i) fsum += f##i[0];
  R12(F_SUM)

  /* exact int8 (qcompile's AVX2 kernels): vpmaddwd on 16-bit operands + vpaddd, 16 per step */
  __m256i w = _mm256_set1_epi16(3), v = _mm256_set1_epi16(5);
#define I_INIT(i) __m256i c##i = _mm256_set1_epi32(i);
  R12(I_INIT)
  t = now();
  for (long n = 0; n < STEPS / 12; n++) {
#define P_STEP(i) c##i = _mm256_add_epi32(c##i, _mm256_madd_epi16(w, v)); __asm__ volatile("" : "+x"(w));
    R12(P_STEP)
  }
  double pairs = STEPS * 16 / (now() - t) / 1e9;

  /* saturating int8 (onnxruntime's AVX2 u8s8): vpmaddubsw + vpmaddwd by ones + vpaddd, 32 per step */
  __m256i ones = _mm256_set1_epi16(1), u = _mm256_set1_epi8(7), s = _mm256_set1_epi8(-3);
  t = now();
  for (long n = 0; n < STEPS / 12; n++) {
#define S_STEP(i) \
  c##i = _mm256_add_epi32(c##i, _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), ones)); __asm__ volatile("" : "+x"(u));
    R12(S_STEP)
  }
  double saturating = STEPS * 32 / (now() - t) / 1e9;
  int isum = 0;
#define I_SUM(i) isum += _mm256_extract_epi32(c##i, 0);
  R12(I_SUM)

  printf("fp32 %.2f\npairs %.2f\nsaturating %.2f\nchecksum %g %d\n", fp32, pairs, saturating, fsum, isum);
  return 0;
}
