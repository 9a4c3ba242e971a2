"""The report: the EM table (Markdown + CSV, laid out like the paper's Table 2), the OpSwap table
(Table 3), the benign task table (FoQA, the paper's Table 4, and GSM8K; :mod:`.tasks`), the likelihood-shift columns and table, the headline findings, and figures (PNG).

Parts (one file each): :mod:`._common` (row labels and order, cell formatting, the figure canvas),
:mod:`.em_table`, :mod:`.em_questions` (the EM table per question), :mod:`.em_labels` (the label judge's
distributions), :mod:`.figures` (judged metrics), :mod:`.persona`, :mod:`.eps`, :mod:`.opswap`,
:mod:`.likelihood` (judge-free shift columns, table and figure), :mod:`.emergence` (EM over training
checkpoints, early stopping), :mod:`.headline`, :mod:`.calibration`
(the judge's agreement with labelled answers, stated next to every judged EM table), :mod:`.judge_usage`
(what judging cost), :mod:`.consistency` (EM consistency across seeds) and :mod:`.model_size` (EM rate against
model size across base models). Everything a
caller uses is re-exported here, so ``from emguard import report as rp; rp.em_table(...)`` works.
"""

from emguard.report._common import (BASE_DATASET, DEFAULT_METHOD_ORDER, DEFAULT_REFERENCE_METHODS, METHOD_LABELS,
                                    REFERENCE_ROWS, _family_name, _fmt_count, _fmt_rate, _is_null, _method_rank,
                                    _row_label, _setting_key, _split_setting, write_table)
from emguard.report.calibration import CALIBRATION_REQUIRED, NOT_JUDGED, calibration_note, calibration_table
from emguard.report.consistency import CONSISTENCY_TABLE_COLUMNS, consistency_table
from emguard.report.em_labels import LABEL_TABLE_COLUMNS, NO_LABELS, label_table
from emguard.report.em_questions import QUESTION_COLUMNS, question_table
from emguard.report.model_size import MODEL_SIZE_COLUMNS, SIZE_EM_COLUMNS, model_sizes, size_em_table
from emguard.report.em_table import EM_REQUIRED, TABLE_COLUMNS, em_table, emphasis
from emguard.report.emergence import EMERGENCE_CSV_COLUMNS, emergence_rows, emergence_table, figure_emergence
from emguard.report.eps import EPS_LENGTH_COLUMNS, NO_SCORED_VARIANT, eps_length_table
from emguard.report.figures import figure_em_vs_incoherence, figure_train_loss
from emguard.report.headline import headline_findings
from emguard.report.judge_usage import USAGE_COLUMNS, judge_usage_table
from emguard.report.likelihood import (SHIFT_COLUMNS, SHIFT_CSV_COLUMNS, SHIFT_REQUIRED, add_shift_columns,
                                       figure_likelihood_shift, shift_table, unjudged_rows)
from emguard.report.adversarial import ADVERSARIAL_COLUMNS, adversarial_table
from emguard.report.monitor import MONITOR_TABLE_COLUMNS, monitor_table
from emguard.report.opswap import OPSWAP_REQUIRED, OPSWAP_SFT, OPSWAP_UNTRAINED, opswap_table
from emguard.report.persona import persona_validation_table
from emguard.report.tasks import TASK_REQUIRED, task_table

__all__ = [
    "BASE_DATASET", "DEFAULT_METHOD_ORDER", "DEFAULT_REFERENCE_METHODS", "EM_REQUIRED", "EPS_LENGTH_COLUMNS", "METHOD_LABELS",
    "NO_SCORED_VARIANT", "OPSWAP_REQUIRED", "OPSWAP_SFT", "OPSWAP_UNTRAINED", "REFERENCE_ROWS", "SHIFT_COLUMNS",
    "SHIFT_CSV_COLUMNS", "SHIFT_REQUIRED", "TABLE_COLUMNS", "USAGE_COLUMNS",
    "ADVERSARIAL_COLUMNS", "MONITOR_TABLE_COLUMNS", "adversarial_table", "monitor_table", "add_shift_columns", "unjudged_rows", "em_table", "emphasis", "eps_length_table", "figure_em_vs_incoherence",
    "figure_likelihood_shift", "figure_train_loss", "headline_findings", "judge_usage_table", "opswap_table", "persona_validation_table",
    "shift_table", "write_table",
    # EM consistency across seeds
    "CONSISTENCY_TABLE_COLUMNS", "consistency_table",
    # EM rate against model size across base models
    "MODEL_SIZE_COLUMNS", "SIZE_EM_COLUMNS", "model_sizes", "size_em_table",
    # the per-question EM table
    "QUESTION_COLUMNS", "question_table",
    # the label judge's distributions (free_form_judge questions)
    "LABEL_TABLE_COLUMNS", "NO_LABELS", "label_table",
    # the benign real tasks (FoQA, GSM8K)
    "TASK_REQUIRED", "task_table",
    # when EM emerges over training checkpoints (emguard.checkpoints, emguard.dynamics)
    "EMERGENCE_CSV_COLUMNS", "emergence_rows", "emergence_table", "figure_emergence",
    # the judge measured (emguard.calibration)
    "CALIBRATION_REQUIRED", "NOT_JUDGED", "calibration_note", "calibration_table",
    # helpers the tests use directly
    "_family_name", "_fmt_count", "_fmt_rate", "_is_null", "_method_rank", "_row_label", "_setting_key",
    "_split_setting",
]
