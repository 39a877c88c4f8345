"""What an operator reads: the per-round terminal table within 100 columns (every column in a CSV), the
report saying which rule decided and which criterion decided nothing, n/a with a reason instead of a 0."""
from __future__ import annotations

import csv
import io


def test_the_round_table_fits_100_columns_and_every_column_goes_to_a_csv(two_round_store, capsys):
    from layerloop.flows.cli.run import print_table
    from layerloop.tasks.reporting.summary import round_summary

    rows = [round_summary(two_round_store, r) for r in (0, 1)]
    for r in rows:  # the demo's slices, the loop beside its control: the widest table the loop prints
        r.update({f"{src}_{m}": 23.456 for src in ("heldout", "control_heldout")
                  for m in ("psnr_object@unseen", "psnr_object@seen", "psnr_logo@unseen", "iou_logo@unseen")})
    print_table(rows, store=two_round_store)
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert max(len(line) for line in lines) <= 100, "\n".join(lines)
    assert "object unseen dB" in out and "23.46 / 23.46" in out
    path = two_round_store.root + "/selection_rate.csv"
    assert f"every column: {path}" in out
    table = list(csv.DictReader(io.StringIO(open(path).read())))
    assert [int(t["round"]) for t in table] == [0, 1]
    assert {"heldout_iou_logo@unseen", "mean_logo_clean", "cycle_kept"} <= set(table[0])


def test_the_report_names_the_deciding_rule_and_criteria_that_decided_nothing(two_round_store):
    from layerloop.tasks.reporting.report import decision_notes, gather

    data = gather(two_round_store, 1)
    assert data["notes"][0].startswith("most rejections: the thresholds rule (")
    assert not any("passed all" in n for n in data["notes"])  # the fixture's scores separate candidates
    data["scores"]["logo_clean"].update(pass_rate=1.0, n=6, threshold=0.5)
    assert "criterion logo_clean passed all 6 candidates: it separated none of them" in decision_notes(data)


def test_precision_against_an_oracle_that_keeps_nothing_is_na_with_the_reason():
    from layerloop.tasks.reporting.report import _precision_recall
    from layerloop.tasks.stages.health import precision_recall

    none_kept = precision_recall([True, False, True], [False, False, False])
    assert none_kept["precision"] is None and none_kept["recall"] is None
    assert _precision_recall({**none_kept, "n": 3}) == "n/a: the oracle's thresholds keep none of 3; see precision@k"
    some = precision_recall([True, False, True], [True, True, False])
    assert (some["precision"], some["recall"]) == (0.5, 0.5) and _precision_recall(some) == "0.500 / 0.500"
