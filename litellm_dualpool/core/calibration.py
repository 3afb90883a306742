"""Online bytes-per-token calibration per (model group, category) key.

The model. A backend's prompt token count is the text's bytes over a bytes-per-token ratio plus
the chat template's framing, which a pure ratio gets wrong for short prompts (a 200-byte
question carries ~10 framing tokens, 20% of its count). Per key we therefore learn

    prompt_tokens ~ theta . x,
    x = (KB, spaces, newlines, digits, punctuation, capitals, multi-byte extra bytes,
         4-space runs, kana   [all /1000],  messages, tool items, 1, has_tools)

i.e. tokens per KB, the extra (or saved) tokens per thousand characters of each class (a
space mostly merges into the next word, digits split, punctuation and capitals often stand
alone: with them the per-prompt error on real text roughly halves against bytes alone), per
message frame, per tool definition or call, per request, and the preamble a template adds once
when tools are defined; plus fixed costs for media parts. The character counts come from the
shape (`core.content`); a shape without them (e.g. rebuilt from a log) gets the key's running
mean densities, which makes the model degrade to a pure ratio for it.

The update. An exponentially weighted least-squares fit: sufficient statistics `A = sum w x x'`,
`b = sum w x y` decay by `ema_beta` per observation, so the fit forgets like the paper's EMA
(window ~ 1/(1-beta)), but it is unbiased from the first sample: a weak ridge prior centred on
the cold-start ratio and typical framing costs keeps the system solvable and carries the
directions the data cannot separate (e.g. framing vs fixed cost when every request has one
message), instead of an EMA's initial value dragging the estimate for ~1/(1-beta) samples.
Weights `1/y^2` make it minimise relative error, so short and long prompts count alike.

Safety. `sigma` is a bias-corrected EMA of the absolute relative error of each prediction made
before its own update (an honest, out-of-sample spread). Routing uses the conservative estimate
`y * (1 + gamma * sigma)` (the paper's `c - gamma*sigma` on the ratio, applied to the whole
count). An observation whose implied ratio is outside [min, max] bytes per token is rejected;
after warm-up one more than `outlier_factor * sigma` away is rejected too (but a streak of them
is a regime change and is let through); each accepted observation is clipped to within
`max_step_fraction` of the prediction, which bounds how far one sample moves the state.
Requests with media parts or token-id prompts are not learned from (their counts are not text),
nor counts above `MAX_PROMPT_TOKENS`. A restored snapshot (calibration_snapshot.py parses it) is
held to the same bounds: a key outside them is clamped and its fit re-solved from its statistics.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from operator import mul
from typing import Any

from litellm_dualpool.core.calibration_snapshot import KeyRecord, parse_snapshot, snapshot_object
from litellm_dualpool.core.linalg import solve, solve_spd
from litellm_dualpool.core.shape import RequestShape, prompt_tokens_upper_bound
from litellm_dualpool.errors import ConfigError

#: Most prompt tokens one observation may report. Above every context window served today
#: (10M tokens); a larger count is a broken or hostile backend, never learned from (and a count
#: beyond ~1e308 would not even convert to a float).
MAX_PROMPT_TOKENS = 10_000_000

#: Feature vector layout (see the module docstring).
_F_KB = 0
#: spaces, newlines, digits, punctuation, uppercase, multibyte extra bytes, 4-space runs, kana
_F_CHARS = range(1, 9)
_F_MSG, _F_TOOL, _F_FIXED, _F_TOOLSET = 9, 10, 11, 12
_N = 13
#: Character densities (per byte) assumed before a key has seen character counts.
DEFAULT_DENSITIES = (0.15, 0.01, 0.01, 0.03, 0.02, 0.0, 0.005, 0.0)
#: Passes of the bounded fit (each holds what the bounds moved and solves the rest again).
_ACTIVE_SET_PASSES = 4
#: Densities of a shape without character counts, as the fit sees it (see `observe`).
_NO_DENSITIES = (0.0,) * len(_F_CHARS)
#: Lowest token cost per thousand characters of each class relative to tokens/KB (so that
#: adding any character never lowers the estimate): a class character is one byte (-1), a
#: multi-byte character adds 1-2 extra bytes (-1.5), a 4-space run is four bytes (-4; `_bounded`
#: lowers its floor by its four spaces), a kana character is three bytes (-3).
_CHAR_FLOORS = (-1.0, -1.0, -1.0, -1.0, -1.0, -1.5, -4.0, -3.0)
#: Highest token cost per thousand characters of a class (Qwen3 gives every digit a token on
#: top of its byte share: ~1200 per thousand digits, above the former cap of 1000).
_CHAR_CAP = 4000.0
#: Observations below this many tokens weigh as if they had this many (1/y^2 weights).
_MIN_WEIGHT_TOKENS = 32.0
#: A key with fewer samples borrows the (model group, content class) key's state when richer.
_MIN_OWN_SAMPLES = 3
#: The fit is re-solved after every observation up to this many samples, then every
#: `_REFIT_EVERY`-th (a solve costs ~0.1 ms of Python; the window is ~1/(1-beta) samples).
_REFIT_EVERY_AFTER = 64
_REFIT_EVERY = 4
#: ... and beyond `_REFIT_RARELY_AFTER` samples every `_REFIT_RARELY`-th (the window is ~500
#: samples: a fit 15 observations old is as good; bench/estimator_accuracy.py is unchanged).
#: After a regime change the next `_REFIT_EVERY_AFTER` observations refit every time again.
_REFIT_RARELY_AFTER = 256
_REFIT_RARELY = 16
#: Least relative margin of the far tier (`Calibrator.estimate_far`). Bytes alone, at a key's
#: usual character mix, miss a prompt's count by up to ~15-20% on real text (English prose
#: against code-heavy prose, Qwen3 CJK with Latin terms: bench/estimator_accuracy.py); 0.3
#: covers that with room, and a class read from a small sample that should have been its
#: neighbour (prose/code) is covered by taking both keys' ranges (`core.estimator`).
FAR_MARGIN_FRACTION = 0.3
#: Key name of the shared key used once max_keys is reached.
OVERFLOW_CATEGORY = "_overflow"
#: Relative slack of the restore bounds (floating-point noise is not a value out of range).
_RESTORE_TOLERANCE = 1e-6


@dataclass(frozen=True, slots=True)
class CategoryKey:
    """Calibration key: each model group has its own tokenizer, each category its own ratio."""

    model_group: str
    category: str


@dataclass(frozen=True, slots=True)
class CalibrationSettings:
    """Knobs of the calibrator. Build it with ``config.CalibrationConfig(...).to_core()``: the
    YAML's knobs are validated there, once.

    cold_start_bytes_per_token: the ratio before any observation (the paper's 4.0).
    ema_beta: per-observation decay of the fit's statistics (window ~ 1/(1-beta) samples).
    sigma_beta: per-observation decay of the spread `sigma`: shorter than the fit's window, so
        the routing margin widens within ~100 requests when errors grow.
    gamma: conservative margin in units of sigma (mean absolute relative error).
    min/max_bytes_per_token: observations implying a ratio outside are rejected; the fit is
        clamped to them.
    max_step_fraction: an observation is clipped to within this fraction of the prediction.
    max_keys: keys beyond this share the (model group, content class) or the overflow key.
    image_tokens / audio_tokens / file_tokens: fixed cost per media part.
    cold_start_sigma: the spread assumed before data (worth `prior_sigma_samples` samples).
    message_tokens / tool_tokens / request_tokens: framing priors (Llama-3/Qwen3 use ~5/~4/~5).
    outlier_factor / outlier_min_fraction / outlier_warmup / outlier_streak: rejection rule
        (after `outlier_streak` rejections in a row the next one is accepted, and the old
        statistics are scaled by `regime_change_keep`: a regime change, not noise).
    min_sigma: floor of the spread used for routing.
    """

    cold_start_bytes_per_token: float = 4.0
    ema_beta: float = 0.998
    sigma_beta: float = 0.99
    gamma: float = 2.0
    min_bytes_per_token: float = 1.0
    max_bytes_per_token: float = 8.0
    max_step_fraction: float = 0.25
    max_keys: int = 256
    image_tokens: int = 1024
    audio_tokens: int = 512
    file_tokens: int = 1024
    cold_start_sigma: float = 0.12
    prior_sigma_samples: float = 2.0
    message_tokens: float = 5.0
    tool_tokens: float = 4.0
    request_tokens: float = 5.0
    outlier_factor: float = 6.0
    outlier_min_fraction: float = 0.15
    outlier_warmup: int = 8
    outlier_streak: int = 5
    regime_change_keep: float = 0.1
    min_sigma: float = 0.005

    def __post_init__(self) -> None:
        # The knobs a YAML sets are bounded once, by config.CalibrationConfig (the one source of
        # those bounds); these are the internal ones no config reaches.
        checks = [
            ("cold_start_sigma", self.cold_start_sigma >= 0.0),
            ("prior_sigma_samples", self.prior_sigma_samples > 0.0),
            ("outlier_factor", self.outlier_factor > 0.0),
            ("regime_change_keep", 0.0 <= self.regime_change_keep <= 1.0),
            ("min_sigma", self.min_sigma >= 0.0),
        ]
        for name, ok in checks:
            if not ok:
                raise ConfigError(f"invalid value {getattr(self, name)!r}", path=name)


@dataclass(frozen=True, slots=True)
class RatioView:
    """The learned state of one key, for metrics and reports.

    bytes_per_token: the marginal ratio (1000 / tokens per KB) of the fit.
    conservative_bytes_per_token: bytes_per_token / (1 + gamma * sigma), what routing uses.
    """

    bytes_per_token: float
    conservative_bytes_per_token: float
    samples: int
    sigma: float = 0.0
    message_tokens: float = 0.0
    request_tokens: float = 0.0
    tool_preamble_tokens: float = 0.0


def features(shape: RequestShape,
             densities: tuple[float, ...] | list[float] = DEFAULT_DENSITIES) -> list[float]:
    """The regression inputs of a shape (exact token ids and media excluded); `densities`
    stand in for missing character counts."""
    kb = shape.total_bytes / 1000.0
    c = shape.char_counts
    if c is None:
        chars = [d * kb for d in densities]
    else:
        chars = [c.spaces / 1000.0, c.newlines / 1000.0, c.digits / 1000.0,
                 c.punctuation / 1000.0, c.uppercase / 1000.0, c.multibyte_extra_bytes / 1000.0,
                 c.space_runs / 1000.0, c.kana / 1000.0]
    messages = float(shape.message_count) if shape.chat_template else 0.0
    return [kb, *chars, messages, float(shape.tool_count), 1.0, 1.0 if shape.has_tools else 0.0]


class _KeyState:
    """Sufficient statistics of one key; mutated only under the calibrator's lock.

    The statistics are `scale * a` and `scale * b`: the per-observation decay multiplies `scale`
    instead of all 182 entries, and an observation adds only the products of its non-zero
    features (most requests have no tools, kana or indentation). With the rarer refits this
    halves `observe` on a warm key (36 -> 18 us). `stats()` gives the decayed values.
    """

    __slots__ = ("a", "b", "densities", "dev_sum", "dev_weight", "eager_refits", "far",
                 "rejected_streak", "samples", "scale", "theta", "version")

    def __init__(self, settings: CalibrationSettings) -> None:
        self.densities = list(DEFAULT_DENSITIES)
        self.a = [[0.0] * _N for _ in range(_N)]
        self.b = [0.0] * _N
        self.scale = 1.0
        self.theta = _prior_theta(settings)
        self.samples = 0
        self.dev_sum = settings.cold_start_sigma * settings.prior_sigma_samples
        self.dev_weight = settings.prior_sigma_samples
        self.rejected_streak = 0
        self.eager_refits = 0  # observations left that refit every time (after a regime change)
        self.version = 0  # bumped per refit; a slower concurrent refit never overwrites a newer
        #: (theta, samples, far-tier coefficients): valid while theta and samples are those
        self.far: tuple[list[float], int, tuple[float, ...]] | None = None

    def sigma(self, settings: CalibrationSettings) -> float:
        return max(self.dev_sum / self.dev_weight, settings.min_sigma)

    def take_refit(self) -> bool:
        """Whether the observation just added should re-solve the fit (uses up an eager refit)."""
        if self.eager_refits > 0:
            self.eager_refits -= 1
            return True
        n = self.samples
        return (n <= _REFIT_EVERY_AFTER
                or (n <= _REFIT_RARELY_AFTER and n % _REFIT_EVERY == 0)
                or n % _REFIT_RARELY == 0)

    def record(self, key: CategoryKey) -> KeyRecord:
        """The persisted form of this state."""
        return KeyRecord(
            model_group=key.model_group, category=key.category, samples=self.samples,
            a_upper=tuple(self.a[i][j] for i in range(_N) for j in range(i, _N)),
            b=tuple(self.b), scale=self.scale, theta=tuple(self.theta),
            densities=tuple(self.densities), dev_sum=self.dev_sum, dev_weight=self.dev_weight,
            rejected_streak=self.rejected_streak, eager_refits=self.eager_refits)

    def stats(self) -> tuple[list[list[float]], list[float]]:
        """Copies of the decayed statistics (A, b): A from its upper triangle, mirrored."""
        k = self.scale
        a = [[0.0] * _N for _ in range(_N)]
        for i, row in enumerate(self.a):
            out = a[i]
            for j in range(i, _N):
                out[j] = a[j][i] = k * row[j]
        return a, [k * v for v in self.b]

    def add(self, x: list[float], y: float, weight: float, decay: float) -> None:
        """A <- decay*A + weight*x*x', b <- decay*b + weight*x*y (on the scaled statistics).
        Only A's upper triangle is kept current (`stats` mirrors it; refits are rare)."""
        self.scale *= decay
        g = weight / self.scale
        a, b = self.a, self.b
        nonzero = [i for i in range(_N) if x[i]]
        for n, i in enumerate(nonzero):
            row, gxi = a[i], g * x[i]
            for j in nonzero[n:]:
                row[j] += gxi * x[j]
            b[i] += gxi * y
        if self.scale < 1e-100:  # fold the scale in long before it could underflow
            self.a, self.b = self.stats()
            self.scale = 1.0


def _prior_theta(s: CalibrationSettings) -> list[float]:
    return [1000.0 / s.cold_start_bytes_per_token, *([0.0] * len(_F_CHARS)),
            s.message_tokens, s.tool_tokens, s.request_tokens, 0.0]


def _prior_precision(s: CalibrationSettings) -> list[float]:
    """Ridge strength per coefficient, in units of relative-error observations.

    (noise / prior sd)^2 with an assumed 5% per-observation noise: tokens/KB sd 100; per
    thousand characters of a class sd 1500 (barely there: the fitted costs reach -2600 per
    thousand 4-space runs and +1200 per thousand Qwen3 digits, and a prior of sd 150 held
    them near zero, which cost code and Qwen3 prose 0.5-0.8 points of MAPE); message framing
    sd 2, tool item sd 4, fixed sd 5, tool preamble sd 300 (weak: learned).
    """
    noise = 0.05
    sds = (100.0, *([1500.0] * len(_F_CHARS)), 2.0, 4.0, 5.0, 300.0)
    return [(noise / sd) ** 2 for sd in sds]


def _solve_holding(a: list[list[float]], b: list[float],
                   held: dict[int, float]) -> list[float] | None:
    """Solve `a x = b` with the coefficients in `held` fixed at their values."""
    if not held:
        return solve_spd(a, b) or solve(a, b)
    free = [i for i in range(len(b)) if i not in held]
    sub = [[a[i][j] for j in free] for i in free]
    rhs = [b[i] - sum(a[i][j] * v for j, v in held.items()) for i in free]
    part = (solve_spd(sub, rhs) or solve(sub, rhs)) if free else []
    if part is None:
        return None
    out = [0.0] * len(b)
    for i, v in zip(free, part, strict=True):
        out[i] = v
    for j, v in held.items():
        out[j] = v
    return out


def _tokens_per_kb(theta: list[float], densities: list[float] | tuple[float, ...]) -> float:
    """Marginal tokens per KB of text with the key's usual character mix."""
    return theta[_F_KB] + sum(theta[j] * d for j, d in zip(_F_CHARS, densities, strict=True))


def _far_text(coeffs: tuple[float, ...], shape: RequestShape) -> float:
    """The text tokens of a shape without character counts from a key's far coefficients
    (`Calibrator._far_coefficients`): `features` at the key's usual mix, dotted with theta."""
    per_kb, per_message, per_tool, fixed, toolset = coeffs[:5]
    text = per_kb * shape.total_bytes / 1000.0 + fixed
    if shape.chat_template:
        text += per_message * shape.message_count
    if shape.tool_count or shape.has_tools:
        text += per_tool * shape.tool_count + (toolset if shape.has_tools else 0.0)
    return max(text, 0.0)


def _dot(theta: list[float], x: list[float]) -> float:
    """theta . x (both of length _N; `map` sums in the same order as a loop, ~2x faster)."""
    total: float = sum(map(mul, theta, x))
    return total


def _learnable(shape: RequestShape, prompt_tokens: int) -> bool:
    """A count that can teach a bytes-per-token ratio: an integer in [1, MAX_PROMPT_TOKENS] for
    a text-only prompt (media and token-id prompts are charged, never learned from)."""
    return (type(prompt_tokens) is int and 0 < prompt_tokens <= MAX_PROMPT_TOKENS
            and not shape.media_count and shape.exact_prompt_tokens is None
            and shape.total_bytes > 0)


def _max_sigma(s: CalibrationSettings) -> float:
    """Largest spread a restored key may carry (see `Calibrator._restored`)."""
    return s.max_bytes_per_token / s.min_bytes_per_token


def _close(got: list[float], want: tuple[float, ...] | list[float]) -> bool:
    return all(abs(g - w) <= _RESTORE_TOLERANCE * max(abs(w), 1.0)
               for g, w in zip(got, want, strict=True))


class Calibrator:
    """Learns bytes-per-token online from backend-reported prompt token counts.

    Thread safe. `estimate_prompt_tokens` is what routing uses (conservative: rounds up);
    `observe` learns from one finished request; `snapshot`/`restore` persist the whole state.
    """

    def __init__(self, settings: CalibrationSettings | None = None) -> None:
        self.settings = settings or CalibrationSettings()
        self._states: dict[CategoryKey, _KeyState] = {}
        self._lock = threading.Lock()
        self._prior = _prior_theta(self.settings)
        self._precision = _prior_precision(self.settings)
        self._prior_far: tuple[float, ...] | None = None

    # -- reading ---------------------------------------------------------------------------
    def _lookup(self, key: CategoryKey, shape: RequestShape | None) -> _KeyState | None:
        state = self._states.get(key)
        if state is not None and state.samples >= _MIN_OWN_SAMPLES:
            return state
        if shape is not None:
            fallback = self._states.get(CategoryKey(key.model_group, shape.content_class.value))
            if fallback is not None and fallback.samples > (state.samples if state else 0):
                return fallback
        if state is None and len(self._states) >= self.settings.max_keys:
            return self._states.get(CategoryKey(key.model_group, OVERFLOW_CATEGORY))
        return state

    def _media_tokens(self, shape: RequestShape) -> int:
        s = self.settings
        return (shape.image_count * s.image_tokens + shape.audio_count * s.audio_tokens
                + shape.file_count * s.file_tokens)

    def estimate_point_tokens(self, key: CategoryKey, shape: RequestShape) -> int:
        """The point (unbiased) estimate of the prompt tokens; not what routing uses."""
        return self._estimate(key, shape, conservative=False)

    def estimate_prompt_tokens(self, key: CategoryKey, shape: RequestShape) -> int:
        """The conservative estimate routing uses: point * (1 + gamma * sigma), rounded up."""
        return self._estimate(key, shape, conservative=True)

    def estimate_both(self, key: CategoryKey, shape: RequestShape) -> tuple[int, int]:
        """(point, conservative) under one lock acquisition."""
        return self.estimate_range(key, shape)[1:]

    def estimate_range(self, key: CategoryKey, shape: RequestShape) -> tuple[int, int, int]:
        """(optimistic, point, conservative) under one lock acquisition; see `_combine`."""
        with self._lock:
            state = self._lookup(key, shape)
            theta = state.theta if state else self._prior
            densities = state.densities if state else DEFAULT_DENSITIES
            sigma = state.sigma(self.settings) if state else self._cold_sigma()
            return self._combine(theta, densities, sigma, shape)

    def estimate_far(self, key: CategoryKey, shape: RequestShape,
                     neighbour: CategoryKey | None = None) -> tuple[int, int, int, int, int]:
        """(low, optimistic, point, conservative, high) of a shape without character counts:
        the usual range from the key's ratio at its usual character mix, and a wide one,
        `point * (1 -/+ far margin)` within the hard bounds (`min_text_tokens`,
        `prompt_tokens_upper_bound`), that the far tier decides from (see `far_margin`).
        `neighbour`: a second key whose wide range is included (a class the first may be).

        Straight arithmetic on the key's cached coefficients (the bytes-only features are the
        bytes, the messages, the tools and the constants), not the 13-feature dot product."""
        with self._lock:
            state = self._lookup(key, shape)
            coeffs = self._far_coefficients(state)
            other = None
            if neighbour is not None:
                other_state = self._lookup(neighbour, shape)
                if other_state is not state:
                    other = self._far_coefficients(other_state)
        fixed = (self._media_tokens(shape) if shape.media_count else 0) + (
            shape.exact_prompt_tokens or 0)
        floor = math.ceil(shape.total_bytes / self.settings.max_bytes_per_token)
        text = _far_text(coeffs, shape)
        optimistic = max(math.floor(text * coeffs[6]), floor)
        conservative = math.ceil(text * coeffs[7])
        low, high = text * coeffs[8], text * coeffs[9]
        if other is not None:
            other_text = _far_text(other, shape)
            low = min(low, other_text * other[8])
            high = max(high, other_text * other[9])
        low_tokens = max(math.floor(max(low, 0.0)), floor)
        high_tokens = math.ceil(high)
        upper = prompt_tokens_upper_bound(shape)
        if upper is not None:
            high_tokens = min(high_tokens, upper)
        return (fixed + min(low_tokens, optimistic), fixed + optimistic, fixed + math.ceil(text),
                fixed + conservative, fixed + max(high_tokens, conservative))

    def _far_coefficients(self, state: _KeyState | None) -> tuple[float, ...]:
        """(tokens per KB at the usual mix, per message, per tool, fixed, tool preamble, sigma,
        then the factors of the text estimate: optimistic `max(1 - gamma * sigma, 0)`,
        conservative `1 + gamma * sigma`, wide `1 -/+ far_margin(sigma)`) of a key, cached until
        its fit or its observations change (not computed per request); under the lock."""
        if state is None:
            if self._prior_far is None:
                t = self._prior
                self._prior_far = self._far_tuple(t, DEFAULT_DENSITIES, self._cold_sigma())
            return self._prior_far
        cached = state.far
        if cached is None or cached[0] is not state.theta or cached[1] != state.samples:
            t = state.theta
            cached = state.far = (t, state.samples, self._far_tuple(
                t, state.densities, state.sigma(self.settings)))
        return cached[2]

    def _far_tuple(self, t: list[float], densities: list[float] | tuple[float, ...],
                   sigma: float) -> tuple[float, ...]:
        routing = self.settings.gamma * sigma
        margin = self.far_margin(sigma)
        return (_tokens_per_kb(t, densities), t[_F_MSG], t[_F_TOOL], t[_F_FIXED], t[_F_TOOLSET],
                sigma, max(1.0 - routing, 0.0), 1.0 + routing, 1.0 - margin, 1.0 + margin)

    def far_margin(self, sigma: float) -> float:
        """Relative margin of the far tier around a bytes-only point estimate: at least
        `FAR_MARGIN_FRACTION`, and never narrower than twice the routing margin
        (`2 * gamma * sigma`), so that a far decision is one the near tier would make too."""
        return max(FAR_MARGIN_FRACTION, 2.0 * self.settings.gamma * sigma)

    def min_text_tokens(self, shape: RequestShape) -> int:
        """The fewest tokens the text of `shape` can take: its bytes at `max_bytes_per_token`.
        An observation above that ratio is rejected as impossible, so no learned state, however
        wide its spread, may estimate fewer."""
        return math.ceil(shape.total_bytes / self.settings.max_bytes_per_token)

    def _estimate(self, key: CategoryKey, shape: RequestShape, *, conservative: bool) -> int:
        point, cons = self.estimate_both(key, shape)
        return cons if conservative else point

    def _cold_sigma(self) -> float:
        return max(self.settings.cold_start_sigma, self.settings.min_sigma)

    def _combine(self, theta: list[float], densities: list[float] | tuple[float, ...],
                 sigma: float, shape: RequestShape) -> tuple[int, int, int]:
        """(optimistic, point, conservative): the text estimate scaled by `1 - gamma*sigma`,
        1 and `1 + gamma*sigma`, plus the fixed media and token-id counts.

        The optimistic one (what the refusal check uses) never goes below the text's bytes at
        `max_bytes_per_token`: a spread of 1/gamma (0.5 at gamma 2) makes the scaled estimate
        zero, and without the bound a 9 MB request was sent to the backend. It is computed
        from the unrounded text estimate (not as `2*point - conservative`, whose roundings
        made it dip by a token as the prompt grew), so it is monotone in the text."""
        fixed = self._media_tokens(shape) + (shape.exact_prompt_tokens or 0)
        if shape.total_bytes == 0 and shape.exact_prompt_tokens is not None:
            return fixed, fixed, fixed  # a pure token-id prompt: exact, no framing to add
        text = max(_dot(theta, features(shape, densities)), 0.0)
        margin = self.settings.gamma * sigma
        low = max(math.floor(text * max(1.0 - margin, 0.0)), self.min_text_tokens(shape))
        return fixed + low, fixed + math.ceil(text), fixed + math.ceil(text * (1.0 + margin))

    def ratio(self, key: CategoryKey) -> RatioView:
        with self._lock:
            state = self._states.get(key)
            theta = list(state.theta) if state else list(self._prior)
            densities = list(state.densities) if state else list(DEFAULT_DENSITIES)
            sigma = state.sigma(self.settings) if state else self._cold_sigma()
            samples = state.samples if state else 0
        bpt = 1000.0 / _tokens_per_kb(theta, densities)
        return RatioView(
            bytes_per_token=bpt,
            conservative_bytes_per_token=bpt / (1.0 + self.settings.gamma * sigma),
            samples=samples,
            sigma=sigma,
            message_tokens=theta[_F_MSG],
            request_tokens=theta[_F_FIXED],
            tool_preamble_tokens=theta[_F_TOOLSET],
        )

    def bytes_per_token(self, key: CategoryKey) -> float:
        """`ratio(key).bytes_per_token` without building the view (a gauge reads it after every
        observation)."""
        with self._lock:
            state = self._states.get(key)
            if state is None:
                return 1000.0 / _tokens_per_kb(self._prior, DEFAULT_DENSITIES)
            return 1000.0 / _tokens_per_kb(state.theta, state.densities)

    def spread(self, key: CategoryKey) -> float:
        """The learned spread `sigma` of a key (mean absolute relative error of its out-of-sample
        predictions, floored at `min_sigma`): routing adds `gamma * sigma` to the point
        estimate. Exported per key so a widening margin is visible (a gauge reads it after
        every observation)."""
        with self._lock:
            state = self._states.get(key)
            return state.sigma(self.settings) if state else self._cold_sigma()

    def settled(self, key: CategoryKey, min_samples: int, max_spread: float) -> bool:
        """Whether `key`'s fit has settled: it rests on at least `min_samples` observations and
        its learned spread is at most `max_spread` (core/learning.py samples such keys). A
        regime change widens the spread again, which unsettles the key."""
        with self._lock:
            state = self._states.get(key)
            return (state is not None and state.samples >= min_samples
                    and state.sigma(self.settings) <= max_spread)

    def keys(self) -> list[CategoryKey]:
        with self._lock:
            return list(self._states)

    # -- learning --------------------------------------------------------------------------
    def observe(self, key: CategoryKey, shape: RequestShape, prompt_tokens: int) -> bool:
        """Learn from one observation; returns False when it was rejected (outlier, media, a
        count that is not an integer in [1, MAX_PROMPT_TOKENS]).

        Steps: refuse what cannot teach a ratio; under the lock, judge the count against the
        key's prediction (ratio bounds, outliers), follow a regime change, fold the (clipped)
        count into the statistics and the spread, update the key's character mix; then refit
        outside the lock when due."""
        if not _learnable(shape, prompt_tokens):
            return False
        with self._lock:
            state = self._slot(key, shape)
            x = features(shape, state.densities)
            predicted = max(_dot(state.theta, x), 1.0)
            if not self._plausible(state, shape, x, prompt_tokens, predicted):
                return self._reject(state)
            self._follow_regime_change(state)
            self._accumulate(state, shape, x, float(prompt_tokens), predicted)
            if shape.char_counts is not None and shape.total_bytes:
                self._update_mix(state, x)
            if not state.take_refit():
                return True
            state.version += 1
            version, (a_copy, b_copy) = state.version, state.stats()
            densities = state.densities[:]
        theta = self._fit(a_copy, b_copy, densities)  # outside the lock: ~0.1 ms of Python
        if theta is not None:
            with self._lock:
                if state.version == version:
                    state.theta = theta
        return True

    def _plausible(self, state: _KeyState, shape: RequestShape, x: list[float],
                   prompt_tokens: int, predicted: float) -> bool:
        """The count implies a ratio within the bounds (for prompts of 64+ bytes), and it is
        no outlier against a warm key's prediction (unless a streak of them says otherwise)."""
        s = self.settings
        framing: float = sum(map(mul, state.theta[_F_MSG:], x[_F_MSG:]))
        text_tokens = prompt_tokens - framing
        if text_tokens > 0 and shape.total_bytes >= 64:
            implied = shape.total_bytes / text_tokens
            if not s.min_bytes_per_token <= implied <= s.max_bytes_per_token:
                return False
        error = abs(prompt_tokens - predicted) / predicted
        return not (state.samples >= s.outlier_warmup and state.rejected_streak < s.outlier_streak
                    and error > max(s.outlier_factor * state.sigma(s), s.outlier_min_fraction))

    def _follow_regime_change(self, state: _KeyState) -> None:
        """A streak of "outliers" is a regime change (new tokenizer, new template): keep only a
        fraction of the old statistics so the fit follows quickly."""
        s = self.settings
        if state.rejected_streak >= s.outlier_streak and state.samples >= s.outlier_warmup:
            state.scale *= s.regime_change_keep
            state.eager_refits = _REFIT_EVERY_AFTER
            if state.scale == 0.0:  # regime_change_keep = 0: forget everything
                state.a, state.b, state.scale = [[0.0] * _N for _ in range(_N)], [0.0] * _N, 1.0
        state.rejected_streak = 0

    def _accumulate(self, state: _KeyState, shape: RequestShape, x: list[float], y: float,
                    predicted: float) -> None:
        """Fold one count into the spread and the fit's statistics, clipped to within
        max_step_fraction of the prediction and weighted by 1/y^2 (relative error)."""
        s = self.settings
        error = abs(y - predicted) / predicted
        state.dev_sum = s.sigma_beta * state.dev_sum + error
        state.dev_weight = s.sigma_beta * state.dev_weight + 1.0
        lo, hi = predicted / (1.0 + s.max_step_fraction), predicted * (1.0 + s.max_step_fraction)
        y_used = min(max(y, lo), hi)
        weight = 1.0 / max(y_used, _MIN_WEIGHT_TOKENS) ** 2
        # Without character counts the class features would only be the densities times the
        # bytes: the same direction as the bytes, which the weak class priors would let the fit
        # split at will (then clamp). Such observations teach bytes/token.
        fitted = x if shape.char_counts is not None else features(shape, _NO_DENSITIES)
        state.add(fitted, y_used, weight, s.ema_beta)
        state.samples += 1

    def _update_mix(self, state: _KeyState, x: list[float]) -> None:
        """The key's mean character mix, bias-corrected (a weighted mean with weights beta^age,
        as if the defaults weighed nothing): with weak class priors the reported bytes/token
        depends on it, and a plain EMA at beta 0.998 is still ~90% defaults after 60 samples."""
        beta = self.settings.ema_beta
        kb = x[_F_KB]
        step = (1.0 - beta) / (1.0 - beta ** state.samples) if beta < 1.0 else 1.0 / state.samples
        for d, j in enumerate(_F_CHARS):
            state.densities[d] += step * (x[j] / kb - state.densities[d])

    def _reject(self, state: _KeyState) -> bool:
        state.rejected_streak += 1
        return False

    def stored_key(self, key: CategoryKey, shape: RequestShape) -> CategoryKey:
        """The key an observation of `key` is (or would be) kept under: `key` itself, or once
        max_keys is reached its content class or the overflow key. Metric labels use it, so
        caller-supplied categories stay bounded there too."""
        with self._lock:
            return self._stored_key(key, shape)

    def _stored_key(self, key: CategoryKey, shape: RequestShape) -> CategoryKey:
        if key in self._states or len(self._states) < self.settings.max_keys:
            return key
        for fallback in (CategoryKey(key.model_group, shape.content_class.value),
                         CategoryKey(key.model_group, OVERFLOW_CATEGORY)):
            if fallback in self._states:
                return fallback
        # One overflow key per model group may exceed max_keys; bounded by model groups.
        return CategoryKey(key.model_group, OVERFLOW_CATEGORY)

    def _slot(self, key: CategoryKey, shape: RequestShape) -> _KeyState:
        key = self._stored_key(key, shape)
        state = self._states.get(key)
        if state is None:
            state = self._states[key] = _KeyState(self.settings)
        return state

    def _fit(self, stats_a: list[list[float]], stats_b: list[float],
             densities: list[float]) -> list[float] | None:
        """Solve the ridge-regularised normal equations within the bounds (None if degenerate).

        A coefficient the bounds move is held there and the others are solved again (a few
        passes of an active-set method): clamping one coefficient of a solved system without
        re-solving the rest leaves a fit that is no longer least squares (a cold start that
        put the level into the space count and a negative cost per byte ended 7-12% high on
        prose once the byte cost was clamped to zero)."""
        prior, precision = self._prior, self._precision
        a = [row[:] for row in stats_a]  # + the ridge on the diagonal (~5x cheaper than a
        for i, row in enumerate(a):      # comprehension over all 169 entries)
            row[i] += precision[i]
        b = [stats_b[i] + precision[i] * prior[i] for i in range(_N)]
        held: dict[int, float] = {}
        for _ in range(_ACTIVE_SET_PASSES):
            theta = _solve_holding(a, b, held)
            if theta is None or not all(math.isfinite(t) for t in theta):
                return None
            bounded = self._bounded(theta)
            moved = {j: bounded[j] for j in range(_N) if j not in held and bounded[j] != theta[j]}
            if not moved:
                break
            held.update(moved)
        return self._ratio_bounded(bounded, densities)

    def _ratio_bounded(self, theta: list[float], densities: list[float]) -> list[float]:
        """`theta` with the ratio at the key's usual character mix moved within [min, max]
        bytes per token (by the tokens per KB)."""
        s = self.settings
        per_kb = _tokens_per_kb(theta, densities)
        lo, hi = 1000.0 / s.max_bytes_per_token, 1000.0 / s.min_bytes_per_token
        if not lo <= per_kb <= hi:
            theta[_F_KB] += min(max(per_kb, lo), hi) - per_kb
        return theta

    def _bounded(self, solved: list[float]) -> list[float]:
        """A copy within the bounds: monotone in every count (a character of any class adds
        >= 0 tokens), caps on each cost, framing within sane ranges."""
        theta = solved[:]
        kb = theta[_F_KB] = min(max(theta[_F_KB], 0.0), 1000.0 / self.settings.min_bytes_per_token)
        for j, floor in zip(_F_CHARS, _CHAR_FLOORS, strict=True):
            theta[j] = min(max(theta[j], floor * kb), _CHAR_CAP)
        # a 4-space run (4 bytes and 4 spaces), a kana character (3 bytes, 2 extra): >= 0 too.
        # Monotone in whole runs of indentation, not in each space: the space that completes a
        # run may lower the estimate (tokenizers merge indentation into one token).
        spaces, extra, runs, kana = 1, 6, 7, 8
        theta[runs] = min(max(solved[runs], -4.0 * (kb + theta[spaces])), _CHAR_CAP)
        theta[kana] = max(theta[kana], -(3 * kb + 2 * theta[extra]))
        theta[_F_MSG] = min(max(theta[_F_MSG], 0.0), 64.0)
        theta[_F_TOOL] = min(max(theta[_F_TOOL], 0.0), 256.0)
        theta[_F_FIXED] = min(max(theta[_F_FIXED], -64.0), 1024.0)
        theta[_F_TOOLSET] = min(max(theta[_F_TOOLSET], 0.0), 8192.0)
        return theta

    # -- persistence -----------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """A small, versioned, JSON-serialisable copy of the whole state."""
        with self._lock:
            records = [st.record(key) for key, st in self._states.items()]
        return snapshot_object(records, asdict(self.settings))

    def restore(self, snapshot: Mapping[str, Any]) -> int:
        """Replace the whole state with a snapshot's; ConfigError (naming the path, nothing
        changed) if malformed. Returns how many keys held values outside this calibrator's
        bounds: those are clamped and their fit re-solved from their statistics.

        The snapshot's settings are informational: this calibrator keeps its own.
        """
        records = parse_snapshot(snapshot, features=_N, densities=len(DEFAULT_DENSITIES))
        regular = sum(r.category != OVERFLOW_CATEGORY for r in records)
        if regular > self.settings.max_keys:
            raise ConfigError(f"{regular} keys exceed max_keys={self.settings.max_keys}",
                              path="snapshot.keys")
        states: dict[CategoryKey, _KeyState] = {}
        clamped = 0
        for record in records:
            state, moved = self._restored(record)
            states[CategoryKey(record.model_group, record.category)] = state
            clamped += moved
        with self._lock:
            self._states = states
        return clamped

    def _restored(self, record: KeyRecord) -> tuple[_KeyState, bool]:
        """A key's state from its record, within this calibrator's bounds; True when a value
        had to be moved (a state this calibrator could not have written).

        Bounds: character densities in [0, 1]; the coefficients within `_bounded` and the
        marginal ratio within [min, max] bytes per token (a coefficient of 1e9 tokens per KB
        would make every request look enormous); the spread at most max/min bytes per token
        (an honest relative error stays below the width of the ratio bounds) over a weight an
        EMA of `sigma_beta` can reach. A moved theta is re-solved from the statistics."""
        s = self.settings
        state = _KeyState(s)
        upper = iter(record.a_upper)
        for i in range(_N):
            for j in range(i, _N):
                state.a[i][j] = state.a[j][i] = next(upper)
        state.b, state.scale = list(record.b), record.scale
        state.samples, state.rejected_streak = record.samples, record.rejected_streak
        state.eager_refits = min(record.eager_refits, _REFIT_EVERY_AFTER)
        state.densities = [min(max(d, 0.0), 1.0) for d in record.densities]
        state.theta = self._within_bounds(list(record.theta), state.densities)
        window = 1.0 / (1.0 - s.sigma_beta)
        low = min(s.prior_sigma_samples, window) * (1.0 - _RESTORE_TOLERANCE)
        high = max(s.prior_sigma_samples, window) * (1.0 + _RESTORE_TOLERANCE)
        state.dev_weight = min(max(record.dev_weight, low), high)
        state.dev_sum = min(record.dev_sum, _max_sigma(s) * state.dev_weight)
        theta_moved = not _close(state.theta, record.theta)
        moved = theta_moved or not _close(
            [*state.densities, state.dev_weight, state.dev_sum],
            [*record.densities, record.dev_weight, record.dev_sum])
        if theta_moved:
            a, b = state.stats()
            theta = self._fit(a, b, state.densities)
            if theta is not None:
                state.theta = theta
        return state, moved

    def _within_bounds(self, theta: list[float], densities: list[float]) -> list[float]:
        """`_bounded`, then the marginal ratio at `densities` within [min, max] bytes/token."""
        return self._ratio_bounded(self._bounded(theta), densities)
