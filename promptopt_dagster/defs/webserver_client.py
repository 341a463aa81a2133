"""Talk to a running Dagster webserver over its GraphQL API: launch, list, inspect and terminate runs.

`promptopt submit/status/cancel` use it so that CI and scripts hand work to the webserver's daemon
(queued, side by side, chained by the sensor) instead of executing it in their own process. Launch,
terminate and reload go through dagster-graphql's client; the reads are plain GraphQL queries
because that client has no public call for run tags, materialization metadata or step errors.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlparse

from promptopt_dagster.core.errors import PromptOptError
from promptopt_dagster.defs.names import PARTITION_TAG

LOCATION = "promptopt_dagster.definitions"  # the code location workspace.yaml loads
REPOSITORY = "__repository__"  # a Definitions object's repository name
FINISHED = {"SUCCESS", "FAILURE", "CANCELED"}

_METADATA = """metadataEntries { label __typename ... on FloatMetadataEntry { floatValue }
  ... on IntMetadataEntry { intValue } ... on BoolMetadataEntry { boolValue } ... on TextMetadataEntry { text }
  ... on JsonMetadataEntry { jsonString } }"""
_RUN_FIELDS = f"""runId jobName status creationTime endTime tags {{ key value }}
  assetMaterializations {{ assetKey {{ path }} partition {_METADATA} }}"""
RUNS = f"""query($filter: RunsFilter, $limit: Int) {{ runsOrError(filter: $filter, limit: $limit) {{ __typename
  ... on Runs {{ results {{ {_RUN_FIELDS} }} }} ... on PythonError {{ message }} }} }}"""
RUN_EVENTS = """query($runId: ID!, $cursor: String) { runOrError(runId: $runId) { __typename
  ... on Run { eventConnection(afterCursor: $cursor, limit: 1000) { cursor hasMore events { __typename
    ... on ExecutionStepFailureEvent { stepKey error { message className errorChain { error { message className } } } }
    ... on RunFailureEvent { message error { message errorChain { error { message } } } }
    ... on EngineEvent { message }
    ... on AssetCheckEvaluationEvent { evaluation { checkName success severity description assetKey { path } } } } } }
  ... on RunNotFoundError { message } ... on PythonError { message } } }"""
PARTITIONS = """query($selector: RepositorySelector!, $name: String!) {
  partitionSetOrError(repositorySelector: $selector, partitionSetName: $name) { __typename
    ... on PartitionSet { partitionsOrError { ... on Partitions { results { name } } } } } }"""


def asset_partition_url(asset: str, partition: str, base: str = "") -> str:
    """The Dagster UI page of one partition of an asset: the asset's Partitions tab with that partition
    selected, which shows that partition's own latest materialization and its metadata. (The asset's
    overview, `/assets/<asset>?partition=<key>`, shows the newest materialization of any partition, so
    such a link can land on another optimization's summary.)

    base: the webserver's address (http://host:port[/prefix]) for a link printed in a terminal, or "" for
    a link inside the UI's own markdown, which then works on whatever address the UI is served at."""
    path = "/".join(quote(part, safe="") for part in asset.split("/"))
    return f"{base.rstrip('/')}/assets/{path}?view=partitions&partition={quote(str(partition), safe='')}"


def _metadata(entries: list[dict]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for entry in entries:
        kind = entry["__typename"]
        if kind == "FloatMetadataEntry":
            values[entry["label"]] = entry["floatValue"]
        elif kind == "IntMetadataEntry":
            values[entry["label"]] = entry["intValue"]
        elif kind == "BoolMetadataEntry":
            values[entry["label"]] = entry["boolValue"]
        elif kind == "TextMetadataEntry":
            values[entry["label"]] = entry["text"]
        elif kind == "JsonMetadataEntry":
            values[entry["label"]] = json.loads(entry["jsonString"])
    return values


@dataclass
class RunView:
    """One run as the webserver reports it, with what its assets recorded (asset name -> metadata)."""

    run_id: str
    job: str
    status: str
    tags: dict[str, str]
    created: float
    ended: float | None
    materialized: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def from_graphql(cls, node: dict) -> RunView:
        materialized: dict[str, dict[str, Any]] = {}
        for event in node.get("assetMaterializations") or []:
            materialized.setdefault(event["assetKey"]["path"][-1], {}).update(_metadata(event["metadataEntries"]))
        return cls(
            run_id=node["runId"],
            job=node["jobName"],
            status=node["status"],
            tags={t["key"]: t["value"] for t in node["tags"]},
            created=node["creationTime"],
            ended=node.get("endTime"),
            materialized=materialized,
        )

    @property
    def partition(self) -> str | None:
        return self.tags.get(PARTITION_TAG)

    @property
    def finished(self) -> bool:
        return self.status in FINISHED


class Webserver:
    """A Dagster webserver at `url` (http://host:port, optionally with a path prefix)."""

    def __init__(self, url: str, timeout_s: float = 60) -> None:
        parsed = urlparse(url if "://" in url else f"http://{url}")
        if not parsed.hostname:
            raise PromptOptError(f"--url {url!r} is not a webserver address; expected e.g. http://127.0.0.1:3000.")
        self.url = f"{parsed.scheme}://{parsed.netloc}{parsed.path.rstrip('/')}"
        self._parsed, self._timeout_s = parsed, timeout_s

    def _client(self):
        # start-up: dagster-graphql brings gql and requests; only a command that talks to a webserver pays it
        from dagster_graphql import DagsterGraphQLClient

        return DagsterGraphQLClient(
            self._parsed.hostname,
            port_number=self._parsed.port,
            use_https=self._parsed.scheme == "https",
            path_prefix=self._parsed.path.rstrip("/"),
            timeout=int(self._timeout_s),
        )

    def query(self, text: str, variables: dict | None = None) -> dict:
        request = urllib.request.Request(
            f"{self.url}/graphql",
            method="POST",
            data=json.dumps({"query": text, "variables": variables or {}}).encode(),
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=self._timeout_s) as reply:
                body = json.loads(reply.read())
        except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
            raise self._unreachable(getattr(exc, "reason", exc)) from None
        if body.get("errors"):
            raise PromptOptError(f"the webserver at {self.url} refused the query: {body['errors'][0]['message']}")
        return body["data"]

    def _unreachable(self, reason) -> PromptOptError:
        return PromptOptError(
            f"no Dagster webserver answers at {self.url} ({reason}). Start one with "
            "`promptopt ui`, or pass --url (or set PROMPTOPT_DAGSTER_URL)."
        )

    def _mutate(self, what: str, call):
        from dagster_graphql import DagsterGraphQLClientError  # start-up: as _client's

        try:
            return call(self._client())
        except DagsterGraphQLClientError as exc:
            raise PromptOptError(
                f"{what} failed at {self.url}: {exc.args[0]}" + (f": {exc.body}" if getattr(exc, "body", None) else "")
            ) from None
        except OSError as exc:
            raise self._unreachable(exc) from None

    def partitions(self, job: str) -> list[str]:
        selector = {"repositoryName": REPOSITORY, "repositoryLocationName": LOCATION}
        found = self.query(PARTITIONS, {"selector": selector, "name": f"{job}_partition_set"})["partitionSetOrError"]
        if found["__typename"] != "PartitionSet":
            raise PromptOptError(
                f"the webserver at {self.url} does not serve this project's job {job!r} "
                f"({found['__typename']}); is it `promptopt ui` of this project?"
            )
        return [p["name"] for p in found["partitionsOrError"].get("results", [])]

    def reload(self) -> None:
        """Reload the code location, so an optimization just added to the YAML becomes a partition."""
        self._mutate("reloading the code location", lambda c: c.reload_repository_location(LOCATION))

    def launch(self, job: str, partition: str, tags: dict[str, str], run_config: dict | None = None) -> str:
        return self._mutate(
            f"launching {job} for {partition}",
            lambda c: c.submit_job_execution(
                job,
                repository_location_name=LOCATION,
                repository_name=REPOSITORY,
                run_config=run_config or {},
                tags={**tags, PARTITION_TAG: partition},
            ),
        )

    def terminate(self, run_id: str) -> None:
        self._mutate(f"canceling run {run_id}", lambda c: c.terminate_run(run_id))

    def runs(
        self, tags: dict[str, str] | None = None, limit: int = 100, run_ids: list[str] | None = None
    ) -> list[RunView]:
        """Newest first."""
        filter_: dict = {}
        if tags:
            filter_["tags"] = [{"key": k, "value": v} for k, v in tags.items()]
        if run_ids:
            filter_["runIds"] = run_ids
        found = self.query(RUNS, {"filter": filter_, "limit": limit})["runsOrError"]
        if found["__typename"] != "Runs":
            raise PromptOptError(f"the webserver at {self.url} could not list runs: {found.get('message')}")
        return [RunView.from_graphql(node) for node in found["results"]]

    def find_run(self, run_id: str) -> RunView:
        """A run by its id or a unique prefix of it (the 8 characters the runs list and `status` show)."""
        if len(run_id) == 36:
            found = self.runs(run_ids=[run_id], limit=1)
        else:
            found = [r for r in self.runs(limit=1000) if r.run_id.startswith(run_id)]
        if len(found) != 1:
            raise PromptOptError(
                f"{'no' if not found else 'more than one'} run with id {run_id!r} on {self.url}"
                f"{'' if not found else '; give more characters of it'}."
            )
        return found[0]

    def error_of(self, run_id: str) -> str | None:
        """Why a run failed, in the user's terms: a failed blocking check's description, else the
        innermost error of the failed step (e.g. a DatasetError), else the run's own failure message."""
        events, cursor = [], None
        while True:
            found = self.query(RUN_EVENTS, {"runId": run_id, "cursor": cursor})["runOrError"]
            if found["__typename"] != "Run":
                return found.get("message")
            page = found["eventConnection"]
            events += page["events"]
            cursor = page["cursor"]
            if not page["hasMore"]:
                break
        checks = [
            e["evaluation"]
            for e in events
            if e["__typename"] == "AssetCheckEvaluationEvent"
            and not e["evaluation"]["success"]
            and e["evaluation"]["severity"] == "ERROR"
        ]
        if checks:
            return "; ".join(
                f"quality check {c['checkName']} on {'/'.join(c['assetKey']['path'])} failed: "
                f"{c['description'] or 'no description'}"
                for c in checks
            )
        for event in events:
            if event["__typename"] == "ExecutionStepFailureEvent" and event.get("error"):
                chain = [link["error"] for link in event["error"]["errorChain"]] or [event["error"]]
                return f"step {event['stepKey']}: {chain[-1]['message'].strip()}"
        for event in events:
            if event["__typename"] == "RunFailureEvent":
                error = event.get("error")
                chain = [link["error"] for link in (error or {}).get("errorChain", [])] or ([error] if error else [])
                return (chain[-1]["message"] if chain else event["message"]).strip()
        return None
