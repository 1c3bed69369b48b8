"""Host-independent sampling from a tanh-Gaussian policy: the same actions, bit for bit, on every CPU.

Why: a dataset version is checked by its sha256, and a card can only be rebuilt elsewhere if collection
gives the same bytes on the other machine. torch's float32 GEMMs and its normal generator pick kernels by
CPU (AVX2, AVX-512, AMX), so one rounding differs in the last bit, the trajectory (chaotic MuJoCo dynamics)
drifts away, and the rebuilt `halfcheetah/medium-v0` on an AVX2 host no longer matches a card made on an
AVX-512 host (evaluation/RESULTS.md). The "portable" sampler therefore computes the policy with nothing
but IEEE-754 float64 add, subtract, multiply, divide and sqrt — correctly rounded on every conforming CPU,
whatever its vector width — in a fixed order, from the integer stream of numpy's PCG64 (platform
independent). numpy's transcendental functions (exp, log, tanh) are vectorised differently per CPU
(SVML/AVX-512 paths), so this module evaluates them itself from those operations.

`tests/data/test_portable.py` checks the bytes under numpy's and torch's other CPU dispatch paths
(NPY_DISABLE_CPU_FEATURES, ATEN_CPU_CAPABILITY) and that the values agree with the torch actor.
"""

from __future__ import annotations

import numpy as np

__all__ = ["SAMPLER_VERSION", "PortableActor", "PortableNormal", "exp", "expm1", "log", "log1p", "tanh",
           "softplus", "tanh_gaussian_log_prob"]

# Recorded on cards ("collection.sampler"); bump it if anything below changes the bytes it produces.
SAMPLER_VERSION = "portable-1"

# fdlibm's split of ln 2: LN2_HI has its low 32 bits zero, so k * LN2_HI is exact for the k used here.
_LN2_HI = 6.93147180369123816490e-01
_LN2_LO = 1.90821492927058770002e-10
_INV_LN2 = 1.44269504088896338700e00
_LOG_2 = 0.6931471805599453
_HALF_LOG_2PI = 0.9189385332046728
_SQRT_HALF = 0.7071067811865476
# 1/n! for n = 0..18: n! is an exact float64 integer up to 18!, and one correctly rounded division gives each.
_INVERSE_FACTORIALS = tuple(1.0 / float(np.prod(np.arange(1, n + 1, dtype=np.float64))) for n in range(19))
_EXP_COEFFS = _INVERSE_FACTORIALS[:14]
_EXP_LIMIT = 708.0  # exp(709) is near float64's maximum; inputs beyond are clamped


def _horner(coeffs: tuple[float, ...], x: np.ndarray) -> np.ndarray:
    """Σ coeffs[n]·xⁿ by Horner's rule: one fixed sequence of multiplies and adds."""
    result = np.full_like(x, coeffs[-1])
    for c in reversed(coeffs[:-1]):
        result = result * x + c
    return result


def exp(x: np.ndarray) -> np.ndarray:
    """e^x: x = k·ln2 + r with |r| <= ln2/2, e^r by its Taylor series to r¹³ (truncation < 2e-16 relative)."""
    x = np.clip(np.asarray(x, dtype=np.float64), -_EXP_LIMIT, _EXP_LIMIT)
    k = np.rint(x * _INV_LN2)
    r = (x - k * _LN2_HI) - k * _LN2_LO
    return np.ldexp(_horner(_EXP_COEFFS, r), k.astype(np.int32))


def expm1(x: np.ndarray) -> np.ndarray:
    """e^x − 1 without cancellation near 0: the series itself for |x| < 0.5, exp(x) − 1 elsewhere."""
    x = np.asarray(x, dtype=np.float64)
    small = _horner((0.0, *_INVERSE_FACTORIALS[1:]), np.clip(x, -0.5, 0.5))  # truncation < 2e-23
    return np.where(np.abs(x) < 0.5, small, exp(x) - 1.0)


# log(1 + y) = 2·atanh(s), s = y / (2 + y); atanh(s) = Σ s^(2j+1)/(2j+1), |s| <= 1/3 needs 17 terms.
_ATANH_COEFFS = tuple(1.0 / (2 * j + 1) for j in range(18))


def log1p(y: np.ndarray) -> np.ndarray:
    """log(1 + y) for y in [-0.5, 1] (asserted: the callers below stay there)."""
    y = np.asarray(y, dtype=np.float64)
    if y.size and (y.min() < -0.5 or y.max() > 1.0):
        raise ValueError("portable log1p is defined on [-0.5, 1]")
    s = y / (2.0 + y)
    return 2.0 * s * _horner(_ATANH_COEFFS, s * s)


def log(x: np.ndarray) -> np.ndarray:
    """Natural log of positive finite x: x = m·2^e with m in [√½, √2), log m by `log1p(m − 1)` (m − 1 is exact
    there, and log(1) is exactly 0)."""
    x = np.asarray(x, dtype=np.float64)
    mantissa, exponent = np.frexp(x)  # mantissa in [0.5, 1)
    low = mantissa < _SQRT_HALF
    mantissa = np.where(low, mantissa * 2.0, mantissa)
    e = exponent.astype(np.float64) - low
    return e * _LN2_HI + (log1p(mantissa - 1.0) + e * _LN2_LO)


def tanh(u: np.ndarray) -> np.ndarray:
    """tanh(u) = −expm1(−2|u|) / (2 + expm1(−2|u|)), with u's sign."""
    m = expm1(-2.0 * np.abs(np.asarray(u, dtype=np.float64)))
    return np.copysign(-m / (2.0 + m), u)


def softplus(z: np.ndarray) -> np.ndarray:
    """log(1 + e^z) = max(z, 0) + log1p(e^−|z|)."""
    z = np.asarray(z, dtype=np.float64)
    return np.maximum(z, 0.0) + log1p(exp(-np.abs(z)))


def tanh_gaussian_log_prob(pre_tanh: np.ndarray, noise: np.ndarray, log_std: np.ndarray) -> np.ndarray:
    """log π(tanh(u)) for u = mean + exp(log_std)·noise, summed over the last axis; the same formula as
    `offrl.nets.tanh_gaussian_log_prob`, with (u − mean)/std written as the noise it came from."""
    normal_log_prob = -0.5 * noise * noise - log_std - _HALF_LOG_2PI
    log_det_jacobian = 2.0 * ((_LOG_2 - pre_tanh) - softplus(-2.0 * pre_tanh))
    return (normal_log_prob - log_det_jacobian).sum(axis=-1)


class PortableNormal:
    """Standard normal draws by Marsaglia's polar method on PCG64's raw 64-bit integers.

    Pairs are drawn `chunk` at a time and kept in order, so the stream depends only on the seed and on
    how many values were taken, never on how they were requested."""

    def __init__(self, seed: int, chunk: int = 4096):
        self._bits = np.random.PCG64(np.random.SeedSequence(seed))
        self._chunk = chunk
        self._pending = np.empty(0, dtype=np.float64)

    def _refill(self) -> None:
        raw = self._bits.random_raw(2 * self._chunk)
        uniform = (raw >> np.uint64(11)).astype(np.float64) * (2.0 ** -53)  # exact: 53-bit integers in [0, 1)
        u, v = uniform[0::2] * 2.0 - 1.0, uniform[1::2] * 2.0 - 1.0
        s = u * u + v * v
        keep = (s > 0.0) & (s < 1.0)
        u, v, s = u[keep], v[keep], s[keep]
        factor = np.sqrt(-2.0 * log(s) / s)
        pairs = np.stack([u * factor, v * factor], axis=1).reshape(-1)
        self._pending = np.concatenate([self._pending, pairs])

    def standard_normal(self, shape: tuple[int, ...]) -> np.ndarray:
        count = int(np.prod(shape))
        while self._pending.size < count:
            self._refill()
        values, self._pending = self._pending[:count], self._pending[count:]
        return values.reshape(shape)


class PortableActor:
    """A `TanhGaussianActor`'s forward pass in float64 numpy with a fixed summation order.

    Each layer accumulates bias + Σ_k x_k·W[:, k] one input column at a time (no BLAS, whose blocking and
    FMA use vary by CPU). Slower than torch — fine for collection, where the env step costs as much."""

    def __init__(self, state_dict: dict, parameterization):
        """`parameterization`: the actor's `offrl.nets.ActorParameterization` (its log σ bounds and affine map)."""
        linears = sorted({key.rsplit(".", 1)[0] for key in state_dict if key.startswith("net.")
                          and key.endswith(".weight")}, key=lambda name: int(name.rsplit(".", 1)[-1]))
        self._layers = [(np.ascontiguousarray(state_dict[f"{name}.weight"].double().numpy().T),
                         state_dict[f"{name}.bias"].double().numpy()) for name in linears]
        self._log_std_bounds = (float(parameterization.log_std_min), float(parameterization.log_std_max))
        self._affine = ((float(state_dict["log_std_multiplier"]), float(state_dict["log_std_offset"]))
                        if parameterization.multiplier is not None else (None, float(parameterization.offset)))

    def distribution_params(self, obs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = np.asarray(obs, dtype=np.float64)
        for index, (weight_t, bias) in enumerate(self._layers):
            out = np.broadcast_to(bias, (x.shape[0], bias.shape[0])).copy()
            for k in range(weight_t.shape[0]):
                out += x[:, k:k + 1] * weight_t[k]
            x = np.maximum(out, 0.0) if index < len(self._layers) - 1 else out
        mean, log_std = np.split(x, 2, axis=-1)
        multiplier, offset = self._affine
        if multiplier is not None:
            log_std = multiplier * log_std + offset
        elif offset:
            log_std = log_std + offset
        return mean, np.clip(log_std, *self._log_std_bounds)

    def sample(self, obs: np.ndarray, normal: PortableNormal) -> tuple[np.ndarray, np.ndarray]:
        """Stochastic actions in [-1, 1] and their log-probabilities (float64)."""
        mean, log_std = self.distribution_params(obs)
        noise = normal.standard_normal(mean.shape)
        pre_tanh = mean + exp(log_std) * noise
        return tanh(pre_tanh), tanh_gaussian_log_prob(pre_tanh, noise, log_std)
