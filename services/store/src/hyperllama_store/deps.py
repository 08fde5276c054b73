from typing import Annotated

from fastapi import Depends, Request

from hyperllama_store.jobs import Jobs
from hyperllama_store.metrics import StoreMetrics
from hyperllama_store.registry import Transfers
from hyperllama_store.store import Store


def _store(request: Request) -> Store:
    store: Store = request.app.state.store
    return store


def _metrics(request: Request) -> StoreMetrics:
    metrics: StoreMetrics = request.app.state.metrics
    return metrics


def _transfers(request: Request) -> Transfers:
    transfers: Transfers = request.app.state.transfers
    return transfers


def _jobs(request: Request) -> Jobs:
    jobs: Jobs = request.app.state.jobs
    return jobs


StoreDep = Annotated[Store, Depends(_store)]
MetricsDep = Annotated[StoreMetrics, Depends(_metrics)]
TransfersDep = Annotated[Transfers, Depends(_transfers)]
JobsDep = Annotated[Jobs, Depends(_jobs)]
