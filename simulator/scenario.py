"""The scenario schema: what a population looks like, as a validated YAML file.

Every knob the simulator has is a field here, so a scenario written by someone else (the
held-out scenarios are) means exactly what docs/scenarios.md says. The models forbid unknown
keys, so a typo is an error, not a silently ignored setting; `load_scenario` turns every
problem into a `ScenarioError` that names the file, the field and what was wrong.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from simulator.errors import SimulatorError

Probability = Annotated[float, Field(ge=0.0, le=1.0)]
Positive = Annotated[float, Field(gt=0.0)]
NonNegative = Annotated[float, Field(ge=0.0)]
Count = Annotated[int, Field(ge=0)]

CLIENT_KINDS = ("mobile", "desktop", "cli", "sdk")


class ScenarioError(SimulatorError):
    """A scenario file that cannot be used; the message names the file, the field and the problem."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Dist(_Model):
    """A log-normal quantity given by its median and sigma (sigma 0 = always the median).

    Heavy tails everywhere people are involved: activity, degree, delays, message sizes.
    """

    median: Positive
    sigma: Annotated[float, Field(ge=0.0, le=4.0)] = 0.0
    max: Positive | None = None

    @model_validator(mode="after")
    def _max_above_median(self) -> Dist:
        if self.max is not None and self.max < self.median:
            raise ValueError(f"max ({self.max}) is below median ({self.median})")
        return self


class Range(_Model):
    """A uniform range [min, max]."""

    min: NonNegative = 0.0
    max: NonNegative = 0.0

    @model_validator(mode="after")
    def _ordered(self) -> Range:
        if self.max < self.min:
            raise ValueError(f"max ({self.max}) is below min ({self.min})")
        return self


ClientMix = dict[Literal["mobile", "desktop", "cli", "sdk"], NonNegative]


def _check_mix(mix: ClientMix, name: str) -> None:
    if not mix or sum(mix.values()) <= 0:
        raise ValueError(f"{name} needs at least one client kind with a positive weight")


# -- the legitimate population -----------------------------------------------------------
class Diurnal(_Model):
    """Activity follows the day: density ∝ 1 + strength·cos(2π(h − peak_hour)/24)."""

    peak_hour: Annotated[float, Field(ge=0.0, lt=24.0)] = 20.0
    strength: Probability = 0.7
    timezone_spread_h: Annotated[float, Field(ge=0.0, le=12.0)] = 1.0


class Activity(_Model):
    """How normal people talk: conversations with contacts, mostly answered."""

    conversations_per_day: Dist = Dist(median=4.0, sigma=1.0, max=200.0)
    turns_per_conversation: Annotated[float, Field(ge=1.0, le=200.0)] = 6.0
    reply_probability: Probability = 0.85
    reply_delay_s: Dist = Dist(median=45.0, sigma=1.4, max=6 * 3600.0)
    stranger_share: Probability = 0.03
    add_contact_before_stranger: Probability = 0.6
    media_share: Probability = 0.08
    message_bytes: Dist = Dist(median=90.0, sigma=1.0, max=60_000.0)
    media_bytes: Dist = Dist(median=150_000.0, sigma=1.0, max=16_000_000.0)
    passive_sessions_per_day: NonNegative = 4.0
    session_minutes: Dist = Dist(median=4.0, sigma=1.0, max=240.0)
    diurnal: Diurnal = Diurnal()


class Communities(_Model):
    mean_size: Annotated[float, Field(ge=2.0)] = 60.0
    size_sigma: Annotated[float, Field(ge=0.0, le=3.0)] = 0.8


class Groups(_Model):
    """Ordinary group chats inside communities."""

    per_account: NonNegative = 0.15
    size: Dist = Dist(median=8.0, sigma=0.6, max=256.0)
    messages_per_day: Dist = Dist(median=6.0, sigma=1.0, max=500.0)


class Noise(_Model):
    """Legitimate friction: people block and report people who did nothing wrong, rarely."""

    blocks_per_account_day: NonNegative = 0.002
    reports_per_account_day: NonNegative = 0.0003


class Network(_Model):
    """Where people connect from: /24 buckets with Zipf-like sharing (carrier NAT)."""

    buckets: Annotated[int, Field(ge=1, le=60_000)] = 2000
    zipf: Annotated[float, Field(ge=0.0, le=3.0)] = 1.1
    mobile_share: Probability = 0.6


class Population(_Model):
    normal: Annotated[int, Field(ge=2, le=2_000_000)]
    communities: Communities = Communities()
    contacts: Dist = Dist(median=14.0, sigma=0.8, max=1500.0)
    intra_community: Probability = 0.8
    mutual_contacts: Probability = 0.9
    account_age_days: Dist = Dist(median=400.0, sigma=1.0, max=4000.0)
    new_accounts_share: Probability = 0.01
    activity: Activity = Activity()
    groups: Groups = Groups()
    noise: Noise = Noise()
    network: Network = Network()
    client_kinds: ClientMix = {"mobile": 0.85, "desktop": 0.15}

    @model_validator(mode="after")
    def _mix(self) -> Population:
        _check_mix(self.client_kinds, "client_kinds")
        return self


# -- legitimate hard cases ----------------------------------------------------------------
class SmallBusiness(_Model):
    """A shop answering customers and sending promotions to the ones it knows."""

    count: Count = 0
    customers: Dist = Dist(median=200.0, sigma=0.5, max=5000.0)
    inquiries_per_day: Dist = Dist(median=40.0, sigma=0.5, max=2000.0)
    new_customer_share: Probability = 0.3
    promotions_per_day: NonNegative = 0.5
    promotion_reach: Probability = 0.3
    reply_share: Probability = 0.25
    block_probability: Probability = 0.01
    report_probability: Probability = 0.002


class Teacher(_Model):
    """A teacher who adds a class's parents and writes to each of them (40 by default)."""

    count: Count = 0
    parents: Annotated[int, Field(ge=1, le=1000)] = 40
    add_contacts_first: Probability = 0.8
    broadcasts_per_day: NonNegative = 1.0
    reply_share: Probability = 0.5
    class_group: bool = True


class CommunityAdmin(_Model):
    """Runs large groups: adds many people, some of whom they do not know, and posts to them."""

    count: Count = 0
    groups: Annotated[int, Field(ge=1, le=100)] = 3
    group_size: Dist = Dist(median=80.0, sigma=0.4, max=1024.0)
    stranger_share: Probability = 0.5
    announcements_per_day: NonNegative = 4.0
    member_messages_per_day: NonNegative = 20.0
    direct_welcomes: Probability = 0.3


class NewUserOnboarding(_Model):
    """A new account that imports its address book and says hello to a few friends."""

    count: Count = 0
    contacts: Dist = Dist(median=40.0, sigma=0.5, max=1000.0)
    within_minutes: Positive = 30.0
    greet_share: Probability = 0.4
    reply_probability: Probability = 0.8
    welcomes_share: Probability = 0.3


class HardCases(_Model):
    small_business: SmallBusiness = SmallBusiness()
    teacher: Teacher = Teacher()
    community_admin: CommunityAdmin = CommunityAdmin()
    new_user_onboarding: NewUserOnboarding = NewUserOnboarding()


# -- spam strategies ----------------------------------------------------------------------
class VictimResponse(_Model):
    """What recipients of unwanted messages do (per distinct recipient)."""

    block_probability: Probability = 0.15
    report_probability: Probability = 0.06
    delay_s: Dist = Dist(median=240.0, sigma=1.2, max=86_400.0)
    messages_named: Annotated[int, Field(ge=1, le=50)] = 3


class _Spam(_Model):
    """Fields every strategy shares. `rate_per_hour` is per account while it spams."""

    count: Count = 0
    start_h: Range = Range(min=0.0, max=12.0)
    age_days: Range = Range(min=0.0, max=0.0)
    rate_per_hour: Dist = Dist(median=60.0, sigma=0.5)
    duration_h: Range = Range(min=0.5, max=2.0)
    stranger_share: Probability = 0.95
    add_contact_share: Probability = 0.0
    reply_share: Probability = 0.05
    messages_per_target: Annotated[float, Field(ge=1.0, le=100.0)] = 1.0
    media_share: Probability = 0.1
    message_bytes: Dist = Dist(median=200.0, sigma=0.6, max=60_000.0)
    follow_diurnal: bool = False
    client_kinds: ClientMix = {"mobile": 0.7, "desktop": 0.1, "sdk": 0.2}
    response: VictimResponse | None = None
    reason: Literal["spam", "scam", "harassment", "impersonation", "other_policy"] = "spam"

    @model_validator(mode="after")
    def _mix(self) -> _Spam:
        _check_mix(self.client_kinds, "client_kinds")
        return self


class Blaster(_Spam):
    strategy: Literal["blaster"]
    rate_per_hour: Dist = Dist(median=1200.0, sigma=0.5)
    duration_h: Range = Range(min=0.05, max=0.3)


class SlowDrip(_Spam):
    strategy: Literal["slow_drip"]
    rate_per_hour: Dist = Dist(median=8.0, sigma=0.4)
    duration_h: Range = Range(min=12.0, max=48.0)
    age_days: Range = Range(min=1.0, max=30.0)
    follow_diurnal: bool = True


class Farm(_Spam):
    """Bursts of registrations from one network bucket; each account spams a little."""

    strategy: Literal["farm"]
    count: Count = 0  # derived: farms × accounts_per_farm
    farms: Count = 1
    accounts_per_farm: Annotated[int, Field(ge=1, le=10_000)] = 30
    burst_minutes: Positive = 10.0
    rate_per_hour: Dist = Dist(median=40.0, sigma=0.5)
    duration_h: Range = Range(min=0.5, max=3.0)

    @model_validator(mode="after")
    def _derive_count(self) -> Farm:
        if self.count not in (0, self.farms * self.accounts_per_farm):
            raise ValueError("count must equal farms × accounts_per_farm (or be left out)")
        object.__setattr__(self, "count", self.farms * self.accounts_per_farm)
        return self


class Hijacked(_Spam):
    """A real account with years of history that someone takes over and uses to spam."""

    strategy: Literal["hijacked"]
    contact_target_share: Probability = 0.5
    new_network: bool = True
    rate_per_hour: Dist = Dist(median=30.0, sigma=0.5)
    start_h: Range = Range(min=6.0, max=20.0)
    duration_h: Range = Range(min=1.0, max=6.0)
    reason: Literal["spam", "scam", "harassment", "impersonation", "other_policy"] = "scam"


class Ring(_Spam):
    """Coordinated accounts that share one target list and rotate who sends."""

    strategy: Literal["ring"]
    count: Count = 0  # derived: rings × ring_size
    rings: Count = 1
    ring_size: Annotated[int, Field(ge=2, le=1000)] = 10
    targets_per_ring: Annotated[int, Field(ge=1, le=1_000_000)] = 300
    senders_per_target: Annotated[int, Field(ge=1, le=50)] = 2
    intra_ring_messages_per_hour: NonNegative = 2.0
    rate_per_hour: Dist = Dist(median=20.0, sigma=0.5)
    duration_h: Range = Range(min=2.0, max=8.0)
    age_days: Range = Range(min=0.0, max=10.0)

    @model_validator(mode="after")
    def _derive_count(self) -> Ring:
        if self.count not in (0, self.rings * self.ring_size):
            raise ValueError("count must equal rings × ring_size (or be left out)")
        object.__setattr__(self, "count", self.rings * self.ring_size)
        return self


class ConversationalScam(_Spam):
    """Opens with small talk, gets replies, and pitches after a few turns."""

    strategy: Literal["conversational_scam"]
    reply_share: Probability = 0.4
    turns: Annotated[float, Field(ge=1.0, le=100.0)] = 6.0
    rate_per_hour: Dist = Dist(median=6.0, sigma=0.4)
    duration_h: Range = Range(min=6.0, max=24.0)
    age_days: Range = Range(min=0.0, max=20.0)
    follow_diurnal: bool = True
    reason: Literal["spam", "scam", "harassment", "impersonation", "other_policy"] = "scam"


class GroupSpam(_Spam):
    """Creates groups, fills them with strangers and posts to them."""

    strategy: Literal["group_spam"]
    groups_per_account: Dist = Dist(median=3.0, sigma=0.3, max=100.0)
    group_size: Dist = Dist(median=80.0, sigma=0.3, max=1024.0)
    posts_per_group: Dist = Dist(median=5.0, sigma=0.4, max=1000.0)
    leave_probability: Probability = 0.2
    rate_per_hour: Dist = Dist(median=200.0, sigma=0.4)  # member additions + posts per hour
    duration_h: Range = Range(min=0.5, max=2.0)


SpamSpec = Annotated[
    Blaster | SlowDrip | Farm | Hijacked | Ring | ConversationalScam | GroupSpam,
    Field(discriminator="strategy"),
]
STRATEGIES = ("blaster", "slow_drip", "farm", "hijacked", "ring", "conversational_scam", "group_spam")


class Brigade(_Model):
    """Organised false reporting: many reporters, one innocent target, a short window."""

    targets: Annotated[int, Field(ge=1, le=10_000)] = 1
    target_role: Literal["normal", "small_business", "teacher", "community_admin", "new_user_onboarding"] = "normal"
    reporters: Annotated[int, Field(ge=1, le=10_000)] = 20
    start_h: Range = Range(min=0.0, max=20.0)
    window_minutes: Positive = 60.0
    block_share: Probability = 0.5
    messages_named: Annotated[int, Field(ge=0, le=50)] = 2
    reason: Literal["spam", "scam", "harassment", "impersonation", "other_policy"] = "spam"


class Scenario(_Model):
    """One population over one window of simulated time."""

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
    description: str = ""
    seed: int = 0
    start: datetime = datetime(2026, 1, 5, tzinfo=UTC)
    duration_h: Annotated[float, Field(gt=0.0, le=24.0 * 60)] = 24.0
    net_salt: str = "sim"
    population: Population
    hard_cases: HardCases = HardCases()
    spam: list[SpamSpec] = []
    response: VictimResponse = VictimResponse()
    brigades: list[Brigade] = []

    @property
    def start_ms(self) -> int:
        start = self.start if self.start.tzinfo else self.start.replace(tzinfo=UTC)
        return int(start.timestamp() * 1000)

    @property
    def duration_ms(self) -> int:
        return int(self.duration_h * 3_600_000)

    @property
    def spammers(self) -> int:
        return sum(s.count for s in self.spam)


def _where(loc: tuple[Any, ...]) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        elif item in STRATEGIES and parts and parts[-1].endswith("]"):
            continue  # the discriminator tag pydantic inserts, not a field the author wrote
        else:
            parts.append(("." if parts else "") + str(item))
    return "".join(parts) or "(file)"


def parse_scenario(data: Any, source: str = "<scenario>") -> Scenario:
    """Validate already-parsed YAML; errors name `source`, each field and the problem."""
    if not isinstance(data, dict):
        raise ScenarioError(f"{source}: a scenario must be a mapping of fields, got {type(data).__name__}")
    try:
        return Scenario.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{_where(tuple(e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ScenarioError(f"{source}: {problems}") from None


def load_scenario(path: str | Path) -> Scenario:
    """Read and validate a scenario YAML file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ScenarioError(f"{path}: cannot read scenario file: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ScenarioError(f"{path}: not valid YAML: {exc}") from None
    return parse_scenario(data, str(path))
