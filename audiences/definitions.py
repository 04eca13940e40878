"""Segment definitions: segments as code, one YAML file per segment (or a list per file).

    id: 101
    name: Soccer fans
    iab_audience_id: "607"        # optional; checked against the IAB Audience Taxonomy when configured
    ttl_days: 30                  # how long activation keeps a membership alive
    lookback_days: 30
    rule:
      all:
        - {where: [{field: category, op: is, value: "533"}], min_count: 3}
        - not: {where: [{field: host, op: eq, value: shop.example.com}], within_days: 7}
        - segment: 102

A lookalike segment has no rule: it expands a rule segment's members with a model (see
`audiences.lookalike`), and is rebuilt with every build:

    id: 201
    name: Soccer fans, lookalike
    kind: lookalike
    lookback_days: 30             # the window its features are computed over
    lookalike: {seed: 101, reach: 5%, exclude_seed: true, min_similarity: 0.0}   # or size: 50000

A rule is a condition, `all` / `any` of rules, `not` a rule, or a reference to another segment.
A condition aggregates the profile's events that match every `where` predicate within its window
(`within_days`, else the segment's `lookback_days`): it holds when the count, the distinct days
and the engaged time meet their bounds. "Not seen within N days" is `not` of a condition with
`within_days: N`.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Hashable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import re2
import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from audiences.errors import DefinitionError

MAX_WINDOW_DAYS = 366
MAX_COUNT = 1_000_000  # of a condition's events; bounds are bound as UInt64, which wraps past 2^64
MAX_RULE_DEPTH = 32  # rules nested deeper reached ClickHouse's parser depth (1000) near 190
# Segments referring to segments: each level is a query level of the build's statement
# (`compiler._with_referenced`), and a chain of 100 reached ClickHouse's parser depth.
MAX_REFERENCE_DEPTH = 32
_PROP_FIELD = re.compile(r"prop\.[A-Za-z0-9_.:\-]{1,64}")


class Op(enum.StrEnum):
    EQ = "eq"
    NEQ = "neq"
    IN = "in"
    PREFIX = "prefix"
    CONTAINS = "contains"
    REGEX = "regex"
    IS = "is"  # a category, or any of its descendants in the Content Taxonomy


# The fields a predicate may name, and the operators each allows. Anything else is refused.
STRING_OPS = frozenset({Op.EQ, Op.NEQ, Op.IN, Op.PREFIX, Op.CONTAINS, Op.REGEX})
EXACT_OPS = frozenset({Op.EQ, Op.NEQ, Op.IN})
FIELDS: dict[str, frozenset[Op]] = {
    "type": EXACT_OPS,
    "url": STRING_OPS,
    "host": STRING_OPS,
    "path": STRING_OPS,
    "referrer_host": STRING_OPS,
    "utm_source": STRING_OPS,
    "utm_medium": STRING_OPS,
    "utm_campaign": STRING_OPS,
    "utm_term": STRING_OPS,
    "utm_content": STRING_OPS,
    "site": EXACT_OPS,
    "category": frozenset({Op.IS}),
    "device_type": EXACT_OPS,
    "os": EXACT_OPS,
    "browser": EXACT_OPS,
}


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @field_validator("*", mode="after")
    @classmethod
    def _encodable(cls, value: Any) -> Any:
        # A lone surrogate ("\ud800" in YAML or JSON) is a Python string no UTF-8 encodes: it
        # failed the build's statement, and the JSON of any answer naming it.
        for text in value if isinstance(value, list) else [value]:
            if isinstance(text, str) and not text.isascii():
                try:
                    text.encode("utf-8")
                except UnicodeEncodeError:
                    raise ValueError("text holds a lone surrogate (\\ud800-\\udfff): not encodable as UTF-8") from None
        return value


class Predicate(_Model):
    field: str
    op: Op
    value: str | list[str]

    @model_validator(mode="after")
    def _allowed(self) -> Predicate:
        ops = FIELDS.get(self.field) or (STRING_OPS if _PROP_FIELD.fullmatch(self.field) else None)
        if ops is None:
            raise ValueError(f"unknown field {self.field!r}; fields: {', '.join(FIELDS)}, prop.<name>")
        if self.op not in ops:
            raise ValueError(f"{self.field} allows {', '.join(sorted(ops))}, not {self.op.value}")
        if (self.op is Op.IN) != isinstance(self.value, list):
            raise ValueError("op 'in' takes a list of values; the other ops take one value")
        if self.op is Op.IN and not 1 <= len(self.value) <= 1000:
            raise ValueError("op 'in' takes 1 to 1000 values")
        if self.op is Op.REGEX:
            _check_regex(str(self.value))
        return self


# ClickHouse matches with RE2, which rejects some of what Python's `re` takes (possessive
# quantifiers, `(?>...)`, `\Z`, `(?x)`, repeats over 1000). A pattern RE2 rejects failed every
# build once a value of its field was in the window, so RE2 itself checks it here.
_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False  # the error is ours to report, with the file and path


def _check_regex(pattern: str) -> None:
    if len(pattern) > 1000:
        raise ValueError("regex longer than 1000 characters")
    try:
        re2.compile(pattern, _RE2_OPTIONS)
    except re2.error as exc:
        reason = exc.args[0].decode() if exc.args and isinstance(exc.args[0], bytes) else str(exc)
        # RE2 has no back-references or look-arounds, by design: say so, its message does not.
        hint = " (RE2 has no look-arounds or back-references)" if re.search(r"\(\?[=!]|\(\?<[=!]", pattern) else ""
        raise ValueError(f"invalid regex (RE2, as ClickHouse matches): {reason}{hint}") from None


class Condition(_Model):
    where: list[Predicate] = Field(default_factory=list, max_length=20)
    within_days: int | None = Field(None, ge=1, le=MAX_WINDOW_DAYS)
    min_count: int = Field(1, ge=1, le=MAX_COUNT)
    max_count: int | None = Field(None, ge=1, le=MAX_COUNT)
    min_days: int | None = Field(None, ge=1, le=MAX_WINDOW_DAYS + 1)
    min_engaged_ms: int | None = Field(None, ge=1, le=MAX_WINDOW_DAYS * 86_400_000)

    @model_validator(mode="after")
    def _bounds(self) -> Condition:
        if self.max_count is not None and self.max_count < self.min_count:
            raise ValueError("max_count is below min_count")
        # A window of N days spans N + 1 dates: as_of's own, and the N whole days before it.
        if self.min_days is not None and self.within_days is not None and self.min_days > self.within_days + 1:
            raise ValueError(f"min_days {self.min_days} is more than the {self.within_days + 1} dates a window of "
                             f"{self.within_days} days spans: the condition could never hold")
        return self


class All(_Model):
    all: list[Rule] = Field(min_length=1, max_length=100)


class Any_(_Model):
    any: list[Rule] = Field(min_length=1, max_length=100)


class Not(_Model):
    not_: Rule = Field(alias="not")

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class SegmentRef(_Model):
    segment: int = Field(ge=1)


def _rule_kind(value: Any) -> str:
    """Which kind of rule a mapping is, from its keys, so errors speak of that kind alone."""
    if isinstance(value, dict):
        for key in ("all", "any", "not", "segment"):
            if key in value:
                return key
        return "condition"
    return {All: "all", Any_: "any", Not: "not", SegmentRef: "segment"}.get(type(value), "condition")


Rule = Annotated[
    Annotated[Condition, Tag("condition")] | Annotated[All, Tag("all")] | Annotated[Any_, Tag("any")]
    | Annotated[Not, Tag("not")] | Annotated[SegmentRef, Tag("segment")],
    Discriminator(_rule_kind),
]
for _model in (All, Any_, Not):
    _model.model_rebuild()


class Status(enum.StrEnum):
    ACTIVE = "active"
    PAUSED = "paused"
    DRAFT = "draft"


class Lookalike(_Model):
    """Expand the seed segment's members to `reach` of the eligible profiles, or to `size` profiles."""

    seed: int = Field(ge=1)
    reach: float | None = Field(None, gt=0, le=1)
    size: int | None = Field(None, ge=1)
    exclude_seed: bool = True
    min_similarity: float = Field(0.0, ge=0, le=1)

    @field_validator("reach", mode="before")
    @classmethod
    def _percent(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip().endswith("%"):
            return float(value.strip()[:-1]) / 100
        return value

    @model_validator(mode="after")
    def _one_target(self) -> Lookalike:
        if (self.reach is None) == (self.size is None):
            raise ValueError("a lookalike takes one of reach (0 < r <= 1, or a percentage) and size")
        return self


class Segment(_Model):
    id: int = Field(ge=1, le=2**31 - 1)
    name: str = Field(min_length=1, max_length=200)
    description: str = ""
    iab_audience_id: str | None = None
    ttl_days: int = Field(30, ge=1, le=540)
    lookback_days: int = Field(30, ge=1, le=MAX_WINDOW_DAYS)
    status: Status = Status.ACTIVE
    kind: Literal["rule", "lookalike"] = "rule"
    rule: Rule | None = None
    lookalike: Lookalike | None = None

    @model_validator(mode="after")
    def _kind_fits(self) -> Segment:
        if self.kind == "rule" and (self.rule is None or self.lookalike is not None):
            raise ValueError("a rule segment takes a rule and no lookalike")
        if self.kind == "lookalike" and (self.lookalike is None or self.rule is not None):
            raise ValueError("a lookalike segment takes `lookalike: {seed: ..., reach: ...}` and no rule")
        return self

    @model_validator(mode="after")
    def _rule_fits(self) -> Segment:
        for path, node, depth in _walk(self.rule, "rule", 1):
            if depth > MAX_RULE_DEPTH:
                raise ValueError(f"at {path}: rules nest {MAX_RULE_DEPTH} deep at most; "
                                 "refer to another segment instead")
            # A condition without a window of its own has the segment's (`Condition._bounds`).
            if isinstance(node, Condition) and node.within_days is None and node.min_days is not None \
                    and node.min_days > self.lookback_days + 1:
                raise ValueError(f"at {path}: min_days {node.min_days} is more than the {self.lookback_days + 1} "
                                 f"dates a lookback of {self.lookback_days} days spans: the condition could never hold")
        return self

    @field_validator("iab_audience_id")
    @classmethod
    def _iab_form(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[0-9]{1,6}", value):
            raise ValueError("an IAB Audience Taxonomy ID is 1-6 digits")
        return value


def _walk(rule: Any, path: str, depth: int) -> Iterator[tuple[str, Any, int]]:
    """Each node of a rule tree with its path (as errors name it) and depth, parents first."""
    if rule is None:
        return
    yield path, rule, depth
    if isinstance(rule, All | Any_):
        key = "all" if isinstance(rule, All) else "any"
        for index, child in enumerate(rule.all if isinstance(rule, All) else rule.any):
            yield from _walk(child, f"{path}.{key}.{index}", depth + 1)
    elif isinstance(rule, Not):
        yield from _walk(rule.not_, f"{path}.not", depth + 1)


def references(rule: Any) -> Iterator[int]:
    """Segment IDs a rule refers to, directly."""
    if isinstance(rule, SegmentRef):
        yield rule.segment
    elif isinstance(rule, All):
        for child in rule.all:
            yield from references(child)
    elif isinstance(rule, Any_):
        for child in rule.any:
            yield from references(child)
    elif isinstance(rule, Not):
        yield from references(rule.not_)


class SegmentSet:
    """Validated segments: unique IDs, references resolved, no cycles."""

    def __init__(self, segments: Iterable[Segment], sources: Mapping[int, str] | None = None) -> None:
        """`sources`: where each segment was defined (a file, and its index in a list), named in errors."""
        self.by_id: dict[int, Segment] = {}
        self._sources = dict(sources or {})
        for segment in segments:
            if segment.id in self.by_id:
                raise DefinitionError(f"{self._at(segment.id)}segment id {segment.id} is defined twice")
            self.by_id[segment.id] = segment
        self._check_references()

    def _at(self, segment_id: int) -> str:
        """Where the segment was defined, as an error's prefix (empty when not known)."""
        return f"{self._sources[segment_id]}: " if segment_id in self._sources else ""

    def active(self) -> list[Segment]:
        return [s for s in self.by_id.values() if s.status is Status.ACTIVE]

    def rule_segments(self) -> SegmentSet:
        """The set without its lookalikes: what the rule compiler builds."""
        return SegmentSet((s for s in self.by_id.values() if s.kind == "rule"), self._sources)

    def lookalikes(self) -> list[Segment]:
        """Active lookalikes, in ID order."""
        return sorted((s for s in self.active() if s.kind == "lookalike"), key=lambda s: s.id)

    def _check_references(self) -> None:
        for segment in self.by_id.values():
            for ref in references(segment.rule):
                if ref not in self.by_id:
                    raise DefinitionError(f"{self._at(segment.id)}segment {segment.id} refers to unknown segment {ref}")
                if self.by_id[ref].kind == "lookalike":  # rules are built before lookalikes
                    raise DefinitionError(f"{self._at(segment.id)}segment {segment.id} refers to lookalike {ref}; "
                                          "rules can't")
            self._check_seed(segment)
        state: dict[int, int] = {}  # 1 = on the current path, 2 = done
        depth: dict[int, int] = {}  # how many references deep its rule reaches

        def visit(segment_id: int, path: list[int]) -> None:
            if state.get(segment_id) == 2:
                return
            if len(path) > MAX_REFERENCE_DEPTH:  # said before the walk goes deeper than Python does
                raise DefinitionError(f"{self._at(path[0])}segment {path[0]} refers to segments more than "
                                      f"{MAX_REFERENCE_DEPTH} deep")
            if state.get(segment_id) == 1:
                cycle = path[path.index(segment_id):] + [segment_id]
                raise DefinitionError(f"{self._at(segment_id)}segment references form a cycle: "
                                      + " -> ".join(map(str, cycle)))
            state[segment_id] = 1
            refs = list(references(self.by_id[segment_id].rule))
            for ref in refs:
                visit(ref, [*path, segment_id])
            depth[segment_id] = 1 + max(depth[ref] for ref in refs) if refs else 0
            if depth[segment_id] > MAX_REFERENCE_DEPTH:
                raise DefinitionError(f"{self._at(segment_id)}segment {segment_id} refers to segments "
                                      f"{depth[segment_id]} deep; at most {MAX_REFERENCE_DEPTH}")
            state[segment_id] = 2

        for segment_id in sorted(self.by_id):
            visit(segment_id, [])


    def _check_seed(self, segment: Segment) -> None:
        # A seed is a rule segment, so lookalikes never chain and never form a cycle.
        if segment.lookalike is None:
            return
        seed = self.by_id.get(segment.lookalike.seed)
        if seed is None:
            raise DefinitionError(f"{self._at(segment.id)}lookalike {segment.id} has unknown seed segment "
                                  f"{segment.lookalike.seed}")
        if seed.kind != "rule":
            raise DefinitionError(f"{self._at(segment.id)}lookalike {segment.id}: its seed {seed.id} is a lookalike; "
                                  "seeds are rule segments")


def parse_segment(data: Any, source: str = "<definition>") -> Segment:
    try:
        return Segment.model_validate(data)
    except ValidationError as exc:
        raise DefinitionError(f"{source}: {_describe(exc)}") from None


MERGE_TAG = "tag:yaml.org,2002:merge"


class _UniqueKeyLoader(yaml.SafeLoader):
    """Safe YAML with no key given twice in a mapping, and no aliases. PyYAML keeps the last key:
    two segments written without their list markers read as the second alone, and a repeated
    `rule:` replaced the first. An alias is its anchor's node again: a few lines of aliases of
    aliases make a rule of billions of nodes, which validation walks one by one."""

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        if self.check_event(yaml.AliasEvent):
            raise yaml.composer.ComposerError(None, None, "aliases (*name) are not taken: to reuse a rule, "
                                              "refer to its segment (segment: ID)", self.peek_event().start_mark)
        return super().compose_node(parent, index)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _value_node in node.value:
            if key_node.tag == MERGE_TAG:  # `<<: {...}`: its keys are defaults, which later ones override
                continue
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, Hashable):  # a list or mapping as a key: the base loader refuses it
                continue
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} given twice in one mapping", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: Path) -> Any:
    """A YAML file's documents; a DefinitionError naming the file when it cannot be read or parsed."""
    try:
        return yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader)
    except RecursionError:
        raise DefinitionError(f"{path}: nested too deeply to read") from None
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where is not None else ""
        raise DefinitionError(f"{path}: not valid YAML{at}: {getattr(exc, 'problem', None) or exc}") from None
    except OSError as exc:
        raise DefinitionError(f"{path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise DefinitionError(f"{path}: not UTF-8 text (byte {exc.start})") from None


def load_segments(directory: Path, audience_ids: frozenset[str] | None = None, allow_empty: bool = False) -> SegmentSet:
    """Every `*.yaml` / `*.yml` file of the directory: one segment, or a list of segments.

    A directory that is missing is an error, and so is one with no such file unless
    `allow_empty` (what reads pass): a build of none exits every member, and activation then
    removes them all from every destination. A typo in `CRUMB_SEGMENTS_DIR` or a volume not
    mounted must not do that."""
    if not directory.is_dir():
        raise DefinitionError(f"{directory}: no such directory of segment definitions")
    # Not hidden files: an editor's lock link (`.#s.yaml`) or backup is no definition.
    paths = sorted(path for path in [*directory.glob("*.yaml"), *directory.glob("*.yml")]
                   if not path.name.startswith("."))
    segments, sources = [], {}
    for path in paths:
        documents = read_yaml(path)
        for index, item in enumerate(documents if isinstance(documents, list) else [documents]):
            source = f"{path}" + (f"[{index}]" if isinstance(documents, list) else "")
            segment = parse_segment(item, source)
            if audience_ids is not None and segment.iab_audience_id and segment.iab_audience_id not in audience_ids:
                raise DefinitionError(f"{source}: iab_audience_id {segment.iab_audience_id!r} is not in the taxonomy")
            if segment.id in sources:
                raise DefinitionError(f"{source}: segment id {segment.id} is defined twice "
                                      f"(also in {sources[segment.id]})")
            sources[segment.id] = source
            segments.append(segment)
    if not segments and not allow_empty:  # no file, or files of empty lists
        raise DefinitionError(f"{directory}: no segment definitions (*.yaml, *.yml) in the directory; "
                              "to build none, pause them (status: paused)")
    return SegmentSet(segments, sources)


RULE_TAGS = frozenset({"condition", "all", "any", "not", "segment"})  # the kinds of rule (`_rule_kind`)
# The branches pydantic tries for a predicate's value, named in its errors' locations.
ONE_VALUE, VALUE_LIST = "str", "list[str]"


def _describe(error: ValidationError) -> str:
    errors = error.errors()
    first = errors[0]
    if ONE_VALUE in first["loc"] and isinstance(first["input"], list):
        # A list where one string is wrong: the error is the list's, at its item.
        first = next((e for e in errors if VALUE_LIST in e["loc"]), first)
    return f"at {_yaml_path(first['loc']) or '(top)'}: {first['msg'].removeprefix('Value error, ')}"


def _yaml_path(loc: tuple[Any, ...]) -> str:
    """Pydantic's location as the YAML's path: without the kind tag it puts after each place a rule
    sits (`rule`, `not`, an item of `all` / `any`), nor the branch of a value it tried."""
    parts: list[str] = []
    rule_here = False
    for part in loc:
        if rule_here and part in RULE_TAGS:
            rule_here = False
            continue
        if part in (ONE_VALUE, VALUE_LIST) and parts and parts[-1] == "value":
            continue
        parts.append(str(part))
        rule_here = (part == "rule" and len(parts) == 1) or part == "not" \
            or (isinstance(part, int) and len(parts) >= 2 and parts[-2] in ("all", "any"))
    return ".".join(parts)
