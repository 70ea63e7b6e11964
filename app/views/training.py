"""Training: the loss and Recall@K / MAP@R curves of finished checkpoints and of runs still training."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from app.lab import figures, models, runs, sidebar
from app.lab.errors import describe_error
from app.lab.settings import checkpoint_dir

WATCH_S = 3.0  # seconds between two reads of a followed run's run.json

st.header("Training")
st.caption("The metrics history that training stored in each checkpoint (`meta['history']`), and the one a run "
           "directory still training commits at every epoch's end (`DIR/run.json`); epoch 0, when there, is the "
           "untrained model's evaluation (no loss yet).")

ctx = sidebar.context()
options = {name: str(path) for name, path in models.list_checkpoints().items()}
current = None
if ctx.checkpoint is not None:
    current = next((name for name, path in options.items() if str(Path(path).resolve()) == ctx.checkpoint.path),
                   None)
    if current is None:  # a path typed in the sidebar
        current = ctx.checkpoint.name
        options[current] = ctx.checkpoint.path
row = st.columns([2, 2])
chosen = row[0].multiselect("Finished checkpoints", list(options), key="training_checkpoints",
                            default=[current] if current else list(options)[:1])
run_dir = row[1].text_input("Follow a run directory (`--out` of python -m diablo.train)", key="training_run",
                            placeholder="runs/pre-dimension").strip()
if not options and not run_dir:
    st.error(f"No checkpoints in {checkpoint_dir()}; enter a run directory to follow.")
    st.stop()

cards = {}
for name in chosen:
    try:
        card = models.read_card(models.checkpoint_ref(options[name]))
    except Exception as err:  # one unreadable checkpoint does not hide the others
        st.error(f"Cannot read {name}: {describe_error(err)}", icon=":material/error:")
        continue
    if not card.history:
        st.info(f"{name} stores no metrics history.")
        continue
    cards[name] = card


@st.fragment(run_every=WATCH_S if run_dir else None)
def curves() -> None:
    """The charts; with a run directory, re-read every WATCH_S seconds (only this part reruns)."""
    histories = {name.removesuffix(".safetensors"): card.history for name, card in cards.items()}
    state = None
    if run_dir:
        state, problem = runs.read_run(run_dir)
        if state is None:
            st.info(f"Following {run_dir}: {problem}.")
        else:
            best = "none yet" if state.best_epoch is None else f"epoch {state.best_epoch}"
            st.markdown(f"Following **{state.name}** (live): epoch **{state.epoch}**, step {state.step}, best "
                        f"{best} (by Recall@1); run.json written {state.age():.0f} s ago, read every "
                        f"{WATCH_S:.0f} s.")
            if state.history:
                histories[f"{state.name} (live)"] = state.history
    if not histories:
        return
    loss_fig, metric_fig = figures.training_figures(histories)
    charts = st.columns(2)
    with charts[0]:
        figures.show_figure(loss_fig, "training-loss", key="training_loss_chart")
    with charts[1]:
        figures.show_figure(metric_fig, "training-metrics", key="training_metrics_chart")
    st.caption("The camera icon of each chart's toolbar downloads it as a PNG.")
    if state is not None and state.history:
        with st.expander(f"{state.name} (live): history"):
            st.dataframe(state.history, hide_index=True)


curves()
for name, card in cards.items():
    with st.expander(f"{name}: history and training config"):
        st.dataframe(card.history, hide_index=True)
        st.json(card.meta.get("train_config") or {}, expanded=False)
