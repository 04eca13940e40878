"""Lookalikes: expand a seed segment with a model of who its members resemble.

One run:
  features  per-profile hashed tokens over the window, in ClickHouse (`audiences.features`)
  train     positive–unlabelled: the seed's profiles (less a 20% holdout) against a random sample of
            the rest; TF-IDF fitted on that sample; two models — logistic regression (SGD) and
            cosine to the seed centroid — and the one with the better validation AUC wins
  evaluate  on the holdout and a fresh unlabelled sample: AUC, recall of held-out seed members at
            1..10% reach, lift (recall / reach) and estimated precision at the chosen reach
  score     the whole eligible population, `chunk_size` profiles at a time → `crumb.lookalike_scores`
  select    the top `reach × population` (or `size`) in SQL, above `min_similarity`, less the seed

Only eligible events become features (no bots, profiling consent) and opted-out profiles are
dropped from the feature table, so nobody else can be scored into an audience. Python holds one
chunk of the population at a time; the training sample is capped.

`build_lookalikes` runs inside a build (profiles as the build linked them, the seed from this
build's `id_segments_next`); `run_lookalike` is the CLI's (each typed ID its own profile, the
seed from the last build's `segment_members`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp
from clickhouse_connect.driver.client import Client
from pydantic import ValidationError
from sklearn.feature_extraction.text import TfidfTransformer
from sklearn.linear_model import SGDClassifier
from sklearn.metrics import roc_auc_score

from audiences.compiler import MEMBERS_NEXT, PROFILE_IDS, member_rows
from audiences.definitions import MAX_WINDOW_DAYS, Lookalike, Segment, SegmentSet
from audiences.errors import InvalidRequest
from audiences.features import BUILD_PROFILES, IDENTITY, FeatureTable, Profiles, Window
from collector.categories import BUILTIN, ContentTaxonomy
from crumb.progress import SILENT, Progress

SCORES = "crumb.lookalike_scores"
RUNS = "crumb.lookalike_runs"
REACHES = tuple(round(0.01 * k, 2) for k in range(1, 11))
CURVE_REACHES = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5)
MIN_SEED = 10  # fewer seed profiles than this in the window: no model, an empty audience
MIN_UNLABELLED = 10  # fewer other profiles than this in either unlabelled sample: likewise
MAX_POSITIVES = 100_000
MAX_UNLABELLED = 200_000
VALIDATION_UNLABELLED = 50_000
CHUNK_SIZE = 50_000
_MILLION = 1_000_000
ALPHAS = (1e-4, 1e-3)  # SGD regularisation strengths tried; validation picks one

# -- models ----------------------------------------------------------------------------------------


@dataclass
class Model:
    name: str
    score: Callable[[sp.csr_matrix], np.ndarray]  # similarity in [0, 1], higher is more alike
    weights: np.ndarray  # per hashed feature: what drives the score


def centroid_model(positives: sp.csr_matrix) -> Model:
    centroid = np.asarray(positives.mean(axis=0)).ravel()
    centroid /= np.linalg.norm(centroid) or 1.0
    return Model("centroid", lambda x: np.clip(x @ centroid, 0, 1), centroid)


def sgd_model(positives: sp.csr_matrix, unlabelled: sp.csr_matrix, alpha: float) -> Model:
    x = sp.vstack([positives, unlabelled]).tocsr()
    y = np.r_[np.ones(positives.shape[0]), np.zeros(unlabelled.shape[0])]
    classifier = SGDClassifier(loss="log_loss", alpha=alpha, class_weight="balanced", max_iter=20, tol=None,
                               random_state=0).fit(x, y)
    return Model("sgd", lambda m: classifier.predict_proba(m)[:, 1], classifier.coef_[0])


# -- evaluation ------------------------------------------------------------------------------------


def evaluate(positive_scores: np.ndarray, unlabelled_scores: np.ndarray, reach: float,
             seed_share: float) -> dict[str, Any]:
    """How well held-out seed members rank among a random sample of everyone else.

    Thresholds come from the unlabelled sample: reach r keeps the top r of it. Lift is recall / r
    (1 is random); precision is the share of the reach made of seed members, estimated from recall.
    """
    y = np.r_[np.ones(len(positive_scores)), np.zeros(len(unlabelled_scores))]
    auc = float(roc_auc_score(y, np.r_[positive_scores, unlabelled_scores])) if len(set(y)) == 2 else None

    def recall(r: float) -> float:
        return float(np.mean(positive_scores >= np.quantile(unlabelled_scores, 1 - r)))

    at_reach = recall(reach)
    return {
        "auc": auc,
        "recall": {f"{r:.0%}": round(recall(r), 4) for r in REACHES},
        "recall_at_reach": round(at_reach, 4),
        "lift_at_reach": round(at_reach / reach, 2),
        "precision_at_reach": round(min(1.0, at_reach * seed_share / reach), 4),
    }


def _shortfall(pos: sp.csr_matrix, held: sp.csr_matrix, unl: sp.csr_matrix, val: sp.csr_matrix) -> str | None:
    """Why the samples can't train and evaluate a model, if they can't (the estimators refuse 0 rows)."""
    if min(pos.shape[0], held.shape[0]) == 0:
        return "seed_too_small"  # the holdout took all of a small seed, or none of it
    if min(unl.shape[0], val.shape[0]) < MIN_UNLABELLED:
        return "too_few_unlabelled"  # the seed is (nearly) everyone
    return None


# -- one run ---------------------------------------------------------------------------------------


@dataclass
class Seed:
    """Where the seed's profiles come from: a query of this package, or an explicit list (tests)."""

    segment_id: int
    sql: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)
    profiles: tuple[str, ...] = ()

    def load(self, table: FeatureTable) -> None:
        if self.sql:
            table.add_seed_from(self.sql, self.parameters)
        table.add_seed(self.profiles)


@dataclass
class LookalikeRun:
    client: Client
    spec: Lookalike
    seed: Seed
    window: Window
    segment_id: int = 0  # 0: an ad-hoc run
    build_id: int = 0
    profiles: Profiles = IDENTITY
    taxonomy: ContentTaxonomy | None = None
    progress: Progress = SILENT
    chunk_size: int = CHUNK_SIZE
    method: str | None = None  # force "sgd" or "centroid"; None: the better validation AUC
    run_id: int = field(default_factory=lambda: time.time_ns() // 1000)
    result: dict[str, Any] = field(default_factory=dict)
    chunks: int = 0

    def run(self) -> dict[str, Any]:
        table = FeatureTable(self.client, f"crumb._lookalike_{self.run_id}_")
        timings: dict[str, float] = {}
        self.result = {"segment_id": self.segment_id, "seed_segment": self.seed.segment_id, "run_id": self.run_id,
                       "build_id": self.build_id, "reach": self.spec.reach, "size": self.spec.size,
                       "exclude_seed": self.spec.exclude_seed, "min_similarity": self.spec.min_similarity,
                       "timings": timings}
        try:
            self._timed(timings, "features", lambda: self._features(table))
            if self.result["seed_profiles"] < MIN_SEED:
                self.result.update(status="seed_too_small", audience=0, method=None)
                return self.result
            trained = self._timed(timings, "train", lambda: self._train(table))
            if trained is None:  # a sample too small to learn from or evaluate on: `_train` set the status
                return self.result
            model, tfidf = trained
            self._timed(timings, "score", lambda: self._score(table, model, tfidf))
            self._timed(timings, "select", lambda: self._select(model))
            self._timed(timings, "explain", lambda: self._explain(table, model))
            self.result["status"] = "ok"
        finally:
            table.drop()
        self._record()
        return self.result

    def _timed(self, timings: dict[str, float], name: str, work: Callable[[], Any]) -> Any:
        started = time.monotonic()
        self.progress.note(f"lookalike {self.segment_id or 'ad hoc'}: {name} ...")
        value = work()
        timings[name] = round(time.monotonic() - started, 3)
        return value

    def _features(self, table: FeatureTable) -> None:
        table.create(self.taxonomy)
        self.seed.load(table)
        self.result["population"] = table.compute(self.window, self.profiles)
        self.result["seed_profiles"] = table.seed_count()

    def _train(self, table: FeatureTable) -> tuple[Model, TfidfTransformer] | None:
        """The better model and its TF-IDF; None, with an empty audience, when a sample is too small."""
        positives = self.result["seed_profiles"]
        others = max(self.result["population"] - positives, 1)
        # Disjoint hash ranges of the unlabelled: the validation sample first, then the training one.
        valid_share = min(0.3, VALIDATION_UNLABELLED / others)
        train_share = min(1.0 - valid_share, min(max(10 * positives, 20_000), MAX_UNLABELLED) / others)
        keep = min(1.0, MAX_POSITIVES / max(positives * 0.8, 1))
        holdout = "modulo(cityHash64(profile, 'holdout'), 5) = 0"
        sample = "modulo(cityHash64(profile, 'sample'), 1000000)"
        params = {"keep": int(keep * _MILLION), "valid": int(valid_share * _MILLION),
                  "train": int((valid_share + train_share) * _MILLION)}
        pos = table.read(f"seed = 1 AND NOT {holdout} AND {sample} < {{keep:UInt32}}", params).counts
        held = table.read(f"seed = 1 AND {holdout}").counts
        val = table.read(f"seed = 0 AND {sample} < {{valid:UInt32}}", params).counts
        unl = table.read(f"seed = 0 AND {sample} >= {{valid:UInt32}} AND {sample} < {{train:UInt32}}", params).counts
        shortfall = _shortfall(pos, held, unl, val)
        if shortfall is not None:
            self.result.update(status=shortfall, audience=0, method=None, training={
                "positives": pos.shape[0], "held_out": held.shape[0], "unlabelled": unl.shape[0],
                "validation": val.shape[0]})
            return None
        tfidf = TfidfTransformer(sublinear_tf=True).fit(sp.vstack([pos, unl]))
        pos, held, unl, val = (tfidf.transform(m) for m in (pos, held, unl, val))
        reach = self._reach_share()
        seed_share = positives / max(self.result["population"], 1)
        sgd, alpha, sgd_eval = max(((m, a, evaluate(m.score(held), m.score(val), reach, seed_share))
                                    for a in ALPHAS for m in [sgd_model(pos, unl, a)]),
                                   key=lambda candidate: candidate[2]["auc"] or 0.0)
        centroid = centroid_model(pos)
        models = [sgd, centroid]
        methods = {"sgd": {**sgd_eval, "alpha": alpha},
                   "centroid": evaluate(centroid.score(held), centroid.score(val), reach, seed_share)}
        best = max(models, key=lambda m: (m.name == self.method, methods[m.name]["auc"] or 0.0))
        self.result.update(method=best.name, methods=methods, training={
            "positives": pos.shape[0], "held_out": held.shape[0], "unlabelled": unl.shape[0],
            "validation": val.shape[0]})
        self.progress.note("lookalike: " + ", ".join(f"{n} AUC {m['auc']:.3f}" for n, m in methods.items()
                                                     if m["auc"] is not None) + f" → {best.name}")
        return best, tfidf

    def _reach_share(self) -> float:
        if self.spec.reach is not None:
            return self.spec.reach
        return min(1.0, (self.spec.size or 0) / max(self.result["population"], 1))

    def _score(self, table: FeatureTable, model: Model, tfidf: TfidfTransformer) -> None:
        done = 0
        for chunk in table.chunks(self.chunk_size):
            scores = model.score(tfidf.transform(chunk.counts)).astype(np.float32)
            n = len(chunk.profiles)
            self.client.insert(SCORES, [[self.segment_id] * n, [self.run_id] * n, chunk.profiles.tolist(),
                                        chunk.seed.astype(np.uint8).tolist(), scores.tolist()],
                               column_names=["segment_id", "run_id", "profile", "seed", "score"],
                               column_oriented=True)
            done += n
            self.chunks += 1
            self.progress.count("lookalike: scored profiles", done, self.result["population"])
        self.result["chunks"] = self.chunks
        self.client.command(f"DELETE FROM {SCORES} WHERE segment_id = {{s:UInt32}} AND run_id < {{r:UInt64}}",
                            parameters={"s": self.segment_id, "r": self.run_id})

    def audience_sql(self) -> tuple[str, dict[str, Any]]:
        """The chosen profiles, best first: a subquery for INSERT ... SELECT."""
        k = self.spec.size or round((self.spec.reach or 0) * self.result["population"])
        sql = (f"SELECT profile, score FROM {SCORES} WHERE segment_id = {{s:UInt32}} AND run_id = {{r:UInt64}} "
               "AND score >= {min:Float32}" + (" AND seed = 0" if self.spec.exclude_seed else "") +
               " ORDER BY score DESC, profile LIMIT {k:UInt64}")
        return sql, {"s": self.segment_id, "r": self.run_id, "min": self.spec.min_similarity, "k": k}

    def _select(self, model: Model) -> None:
        sql, params = self.audience_sql()
        size, threshold = self.client.query(f"SELECT count(), min(score) FROM ({sql})",
                                            parameters=params).result_rows[0]
        self.result.update(audience=int(size), threshold=round(float(threshold), 4) if size else None)
        qs = [round(1 - r, 4) for r in CURVE_REACHES]
        (cuts,) = self.client.query(
            f"SELECT quantilesExact({', '.join(map(str, qs))})(score) FROM {SCORES} "
            "WHERE segment_id = {s:UInt32} AND run_id = {r:UInt64}", parameters=params).result_rows[0]
        self.result["curve"] = [{"reach": r, "similarity": round(float(c), 4)} for r, c in zip(CURVE_REACHES, cuts)]

    def _explain(self, table: FeatureTable, model: Model, top: int = 12) -> None:
        strongest = [int(i) for i in np.argsort(-model.weights)[:top] if model.weights[i] > 0]
        names = table.token_names(strongest, self.window, self.profiles)
        tax = self.taxonomy or BUILTIN
        self.result["top_features"] = [
            {"feature": " / ".join(sorted(names.get(i, [f"#{i}"]))), "weight": round(float(model.weights[i]), 4),
             "label": " / ".join(describe(t, tax) for t in sorted(names.get(i, []))) or f"hashed feature {i}"}
            for i in strongest]

    def _record(self) -> None:
        evaluation = {k: v for k, v in self.result.items() if k not in ("segment_id", "run_id", "build_id")}
        self.client.insert(RUNS, [[
            self.run_id, self.segment_id, self.seed.segment_id, self.build_id, int(time.time() * 1000),
            self.result.get("method") or "", self.result.get("population", 0), self.result.get("seed_profiles", 0),
            self.result.get("audience", 0), json.dumps(evaluation, default=str)]],
            column_names=["run_id", "segment_id", "seed_segment", "build_id", "at", "method", "population",
                          "seed_profiles", "audience", "evaluation"])


def describe(token: str, taxonomy: ContentTaxonomy = BUILTIN) -> str:
    """A feature token as a person reads it: "visits Sports > Soccer", "mobile", "on x.example"."""
    kind, _, value = token.partition(":")
    if kind in ("freq", "days", "recency", "engaged"):
        low, high = 2 ** int(value), 2 ** (int(value) + 1) - 1
        return {"freq": f"{low}-{high} events", "days": f"active on {low}-{high} days",
                "recency": f"last seen {low - 1}-{high - 1} days ago",
                "engaged": f"{low - 1}-{high - 1}s engaged"}[kind]
    return {
        "cat": lambda: f"visits {taxonomy.label(value)}", "host": lambda: f"on {value}",
        "p1": lambda: f"reads {value}", "p2": lambda: f"reads {value}", "dev": lambda: value,
        "os": lambda: f"uses {value}", "br": lambda: f"browses with {value}", "type": lambda: f"{value} events",
        "hour": lambda: f"active in the {value} (UTC)",
    }.get(kind, lambda: token)()


# -- entry points ----------------------------------------------------------------------------------


def run_lookalike(
    client: Client, seed_id: int, *, reach: float | None = None, size: int | None = None, exclude_seed: bool = True,
    min_similarity: float = 0.0, lookback_days: int = 30, taxonomy: ContentTaxonomy | None = None,
    progress: Progress = SILENT, as_of_ms: int | None = None, chunk_size: int = CHUNK_SIZE,
) -> dict[str, Any]:
    """`crumb audiences lookalike`: expand the seed's members of the last build; JSON-safe result.

    Each typed ID is its own profile here (no build is running to link them); the scores stay in
    `crumb.lookalike_scores` under segment 0 until the next ad-hoc run.
    """
    if not 1 <= lookback_days <= MAX_WINDOW_DAYS:  # as a lookalike segment's `lookback_days`
        raise InvalidRequest(f"lookalike --lookback-days: 1 to {MAX_WINDOW_DAYS} days, not {lookback_days}")
    spec = _ad_hoc_spec(seed=seed_id, reach=reach if size is None else None, size=size, exclude_seed=exclude_seed,
                        min_similarity=min_similarity)
    seed = Seed(seed_id, "SELECT DISTINCT concat(if(id_type = 'cookie', 'c:', 'f:'), id) FROM crumb.segment_members "
                "WHERE segment_id = {seed:UInt32}", {"seed": seed_id})
    window = Window(as_of_ms if as_of_ms is not None else int(time.time() * 1000), lookback_days)
    return LookalikeRun(client, spec, seed, window, taxonomy=taxonomy, progress=progress,
                        chunk_size=chunk_size).run()


def _ad_hoc_spec(**options: Any) -> Lookalike:
    """The options of an ad-hoc run, checked as a definition's are; the error names the option."""
    try:
        return Lookalike(**options)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(map(str, first["loc"]))
        option = f" --{field.replace('_', '-')}" if field else ""
        raise InvalidRequest(f"lookalike{option}: {first['msg'].removeprefix('Value error, ')}") from None


def build_lookalikes(
    client: Client, segments: SegmentSet, build_id: int, as_of_ms: int, taxonomy: ContentTaxonomy | None = None,
    progress: Progress = SILENT,
) -> dict[int, dict[str, Any]]:
    """Inside a build, after the rule members: each active lookalike's members → id_segments_next."""
    return {segment.id: _build_one(client, segment, build_id, as_of_ms, taxonomy, progress)
            for segment in segments.lookalikes()}


def _build_one(client: Client, segment: Segment, build_id: int, as_of_ms: int,
               taxonomy: ContentTaxonomy | None, progress: Progress) -> dict[str, Any]:
    assert segment.lookalike is not None
    seed = Seed(segment.lookalike.seed, "SELECT DISTINCT profile_id FROM crumb.segment_members_next "
                "WHERE segment_id = {seed:UInt32}", {"seed": segment.lookalike.seed})
    run = LookalikeRun(client, segment.lookalike, seed, Window(as_of_ms, segment.lookback_days), segment.id, build_id,
                       BUILD_PROFILES, taxonomy, progress, run_id=build_id)
    result = run.run()
    if result["status"] == "ok":
        sql, params = run.audience_sql()
        rows = (f"SELECT typed_id, profile AS profile_id, [{{s:UInt32}}] AS segments, {{r:UInt64}} AS build_id "
                f"FROM ({sql}) "
                f"ARRAY JOIN if(empty(joinGet('{PROFILE_IDS}', 'ids', profile) AS ids), [profile], ids) AS typed_id")
        client.command(
            f"INSERT INTO {MEMBERS_NEXT} (id, id_type, profile_id, segments, entered, build_id) "
            f"{member_rows(rows)}",
            parameters={**params, "as_of_ms": as_of_ms})
    return result


def render_table(result: dict[str, Any]) -> str:
    """The evaluation a person reads after each run, as plain text."""
    if result.get("status") != "ok":
        return f"lookalike of segment {result.get('seed_segment')}: {result.get('status')} ({_why_empty(result)})"
    reach = result["reach"] if result["reach"] is not None else result["size"] / max(result["population"], 1)
    lines = [
        f"lookalike of segment {result['seed_segment']}: {result['audience']:,} profiles of "
        f"{result['population']:,} ({reach:.1%} reach), seed {result['seed_profiles']:,}; "
        f"model: {result['method']} (best validation AUC)",
        "",
        f"{'method':<10}{'AUC':>7}  " + " ".join(f"{r:>5.0%}" for r in REACHES) +
        f"  {'lift':>6}{'precision':>10}   (recall of held-out seed members at each reach)",
    ]
    for name, m in result["methods"].items():
        auc = f"{m['auc']:.3f}" if m["auc"] is not None else "-"
        lines.append(f"{name + (' *' if name == result['method'] else ''):<10}{auc:>7}  " +
                     " ".join(f"{v:>5.2f}" for v in m["recall"].values()) +
                     f"  {m['lift_at_reach']:>6.1f}{m['precision_at_reach']:>10.3f}")
    lines += ["", "reach → minimum similarity: " +
              "  ".join(f"{p['reach']:.0%}: {p['similarity']:.3f}" for p in result["curve"]), "",
              "top features:"]
    lines += [f"  {f['weight']:>8.3f}  {f['label']}" for f in result["top_features"]]
    return "\n".join(lines)


def _why_empty(result: dict[str, Any]) -> str:
    seed, population, training = result.get("seed_profiles", 0), result.get("population", 0), result.get("training")
    if result.get("status") == "too_few_unlabelled":
        return (f"{seed} of the {population} profiles in the window are in the seed; at least {MIN_UNLABELLED} "
                "others needed in each sample")
    if training:
        return f"{seed} seed profiles in the window: too few to hold some out and train on the rest"
    return f"{seed} seed profiles in the window; at least {MIN_SEED} needed"


__all__ = ["build_lookalikes", "describe", "evaluate", "render_table", "run_lookalike"]
