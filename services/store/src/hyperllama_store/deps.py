from typing import Annotated

from fastapi import Depends, Request

from hyperllama_store.metrics import StoreMetrics
from hyperllama_store.store import Store


def _store(request: Request) -> Store:
    store: Store = request.app.state.store
    return store


def _metrics(request: Request) -> StoreMetrics:
    metrics: StoreMetrics = request.app.state.metrics
    return metrics


StoreDep = Annotated[Store, Depends(_store)]
MetricsDep = Annotated[StoreMetrics, Depends(_metrics)]
