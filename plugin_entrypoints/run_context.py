"""Entry point of the OKR run context provider (mlflow.run_context_provider)."""

from mlflow.tracking.context.abstract_context import RunContextProvider


class OkrRunContextProvider(RunContextProvider):
    """Adds okr.cycle, okr.hypothesis and okr.arm to new runs, only in OKR context."""

    def in_context(self):
        from mlflow_okr.store.context import in_okr_context

        return in_okr_context()

    def tags(self):
        from mlflow_okr.store.context import okr_context_tags

        return okr_context_tags()
