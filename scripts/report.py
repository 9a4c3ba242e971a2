from emguard.stages import report, run_stage

i, o = snakemake.input, snakemake.output
run_stage(snakemake, report, metrics_paths=list(i.metrics), train_logs=snakemake.params.train_logs,
          table_md=o.table_md, table_csv=o.table_csv, metrics_out=o.metrics, figure_em=o.figure_em,
          figure_loss=o.figure_loss, persona_validation=i.persona_validation[0] if i.persona_validation else None,
          persona_md=o.persona_md, task_metrics_paths=list(i.get("task_metrics", [])),
          opswap_md=o.get("opswap_md"), opswap_csv=o.get("opswap_csv"), eps_md=o.get("eps_md"),
          eps_csv=o.get("eps_csv"),
          eps_inputs={"nll_path": i.eps_nll[0], "pool_path": i.eps_pool[0], "targets": snakemake.params.eps_targets,
                      "interleave": snakemake.params.interleave, "note": snakemake.params.get("eps_note")}
          if i.eps_nll else None,
          shifts_path=list(i.get("shifts", [])), headline_md=o.get("headline_md"), likelihood_md=o.get("likelihood_md"),
          likelihood_csv=o.get("likelihood_csv"), figure_shift=o.get("figure_shift"),
          calibration_path=i.calibration[0] if i.get("calibration") else None, calibration_md=o.get("calibration_md"),
          judge_usage_paths=list(i.get("judge_usage", [])), judge_usage_md=o.get("judge_usage_md"),
          judge_usage_csv=o.get("judge_usage_csv"), metric_definition=snakemake.params.metric_definition,
          indomain_questions=snakemake.params.indomain_questions,
          question_metrics_paths=list(i.get("question_metrics", [])), questions_md=o.get("questions_md"),
          questions_csv=o.get("questions_csv"),
          label_metrics_paths=list(i.get("label_metrics", [])), labels_md=o.get("labels_md"),
          labels_csv=o.get("labels_csv"), tasks_md=o.get("tasks_md"), tasks_csv=o.get("tasks_csv"),
          consistency_md=o.get("consistency_md"), consistency_csv=o.get("consistency_csv"),
          em_runs=snakemake.params.get("em_runs"),
          curve_paths=list(i.get("curves", [])), emergence=snakemake.params.emergence,
          emergence_md=o.get("emergence_md"), emergence_csv=o.get("emergence_csv"),
          figure_emergence=o.get("figure_emergence"), monitor_csv=i.monitor[0] if i.get("monitor") else None,
          model_sizes=snakemake.params.get("model_sizes"), size_md=o.get("size_md"), size_csv=o.get("size_csv"))
