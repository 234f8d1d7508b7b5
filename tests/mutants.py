"""The mutation check: plant plausible wrong definitions, one at a time, in a copy of the tree, run the tests that
should catch each, and report which mutants survive. A mutant that survives is a definition no test pins down.

Not part of the normal test run (pytest does not collect this file). Run it after changing a definition or a test:

    python tests/mutants.py                      # every mutant
    python tests/mutants.py --list               # names and what each plants
    python tests/mutants.py --only eq1-no-relu,zero-ablation

Each mutant is (name, file, the text as it is, the mistake, the tests that must catch it). The text must occur exactly
once in the file, so a mutant whose target moved is reported as stale rather than silently skipped. A mutant is
killed when its tests fail (pytest exit status 1); an import or syntax error does not count. Exit status: 0 when
every mutant is killed, 1 otherwise.
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

A, C, F, S, P = "tests/test_ablate.py", "tests/test_criteria.py", "tests/test_fzs.py", "tests/test_stream.py", "tests/test_plots.py"
R, TU, AR = "tests/test_reliability.py", "tests/test_tuning.py", "tests/test_arch.py"
IM, AT, D = "tests/test_imagenet.py", "tests/test_atlas.py", "tests/test_device.py"
ST = "tests/test_stats.py"
CO = "tests/test_cornet.py"
NC, DO = "tests/test_newcomer.py", "tests/test_docs.py"
CC = "tests/test_crosscoder.py"
LA = "tests/test_latency.py"

MUTANTS = [
    # --- ImageNet labels, views and accuracy (docs/method.md sections 4 and 5)
    ("labels-by-folder-order", "imagenet.py", "classes.append(WNID_INDEX[name])", "classes.append(folders.index(name))",
     [f"{A}::test_counts_equal_independent_recomputation"]),
    ("errors-counted-as-hits", "ablate.py", "correct[v] = predictions(net, model, x, plan_dev, suffix_batch) == labels[None]",
     "correct[v] = predictions(net, model, x, plan_dev, suffix_batch) != labels[None]", [f"{A}::test_counts_equal_independent_recomputation"]),
    ("zero-ablation", "ablate.py", "mean.to(h.dtype)[None, None, :, None, None]", "torch.zeros_like(mean).to(h.dtype)[None, None, :, None, None]",
     [f"{A}::test_counts_equal_independent_recomputation"]),
    ("released-crop", "imagenet.py", "return 256 - (256 * int(percent)) // 100", "return int(224 * (1 - int(percent) / 100))",
     [f"{A}::test_counts_equal_independent_recomputation"]),
    ("eval-resize-224", "imagenet.py", "base = TF.resize(image, 256, interpolation=bilinear)", "base = TF.resize(image, 224, interpolation=bilinear)",
     [f"{A}::test_counts_equal_independent_recomputation"]),
    ("natural-mean-by-batch", "ablate.py", '"mean": {layer: (state["sum"][layer] / n).float()',
     '"mean": {layer: (state["sum"][layer] / batch).float()',
     [f"{A}::test_natural_stage_values"]),
    ("top9-ascending", "ablate.py", "v, order = torch.sort(v, dim=1, descending=True, stable=True)", "v, order = torch.sort(v, dim=1, descending=False, stable=True)",
     [f"{A}::test_natural_stage_values"]),
    # --- Eq. 3 and screening (docs/method.md section 5)
    ("std-not-sem", "ablate.py", "/ np.maximum(n - 1, 1)) / np.sqrt(np.maximum(n, 1)), np.nan)", "/ np.maximum(n - 1, 1)), np.nan)",
     [f"{A}::test_eq3_ratio_and_sem_on_the_counts"]),
    ("eq3-inverted", "ablate.py", "p[None] / np.where(r > 0, r, 1.0)", "np.where(r > 0, r, 1.0) / p[None]",
     [f"{A}::test_eq3_ratio_and_sem_on_the_counts"]),
    ("eq3-zero-trial-counted", "ablate.py", "p[None] / np.where(r > 0, r, 1.0), np.nan)", "p[None] / np.where(r > 0, r, 1.0), 0.0)",
     [f"{A}::test_eq3_on_planted_accuracies"]),
    ("screening-direction", "ablate.py", 'return diff < bound if op == "<" else diff <= bound', 'return diff > bound if op == "<" else diff >= bound',
     [f"{A}::test_screening_accepts_some_and_rejects_others"]),
    ("screening-strictness", "ablate.py", 'return diff < bound if op == "<" else diff <= bound', 'return diff <= bound if op == "<" else diff <= bound',
     [f"{A}::test_screening_accepts_some_and_rejects_others"]),
    ("partly-measured-block-allowed", "ablate.py", "            if unmeasured:", "            if False:",
     [f"{A}::test_passing_sets_from_criteria_json"]),
    # --- Criteria (docs/method.md section 3)
    ("eq1-no-relu", "criteria.py", "np.maximum(_f64(pre_in), 0.0) < _f64(pre_zoom_in)", "_f64(pre_in) < _f64(pre_zoom_in)",
     [f"{C}::test_eq1_planted"]),
    ("eq2-not-strict", "criteria.py", "(ratio > EQ2_LOW) & (ratio < EQ2_HIGH)", "(ratio >= EQ2_LOW) & (ratio <= EQ2_HIGH)",
     [f"{C}::test_eq2_planted_edges_and_zero_denominators"]),
    ("mix-conventions-swapped", "criteria.py", "np.where(post_pre <= 0, if_pre_nonpos, np.where(post_in <= 0, if_in_nonpos, ratio))",
     "np.where(post_in <= 0, if_in_nonpos, np.where(post_pre <= 0, if_pre_nonpos, ratio))", [f"{C}::test_mix_ratio_released_conventions"]),
    ("mix-flags-swapped-in-main", "criteria.py", "mix_if = (MIX_IF_PRE_NONPOS, MIX_IF_IN_NONPOS)", "mix_if = (MIX_IF_IN_NONPOS, MIX_IF_PRE_NONPOS)",
     [f"{C}::test_the_mix_conventions_are_the_flags"]),
    ("stability-over-every-block", "criteria.py", "    for block in blocks:\n        lacking", "    for block in net.blocks:\n        lacking",
     [f"{C}::test_stability_on_planted_runs"]),
    ("zoom-of-the-pre-fz", "criteria.py", "on_zoom = center_activations(net, model, x_in, ch, [Pre]",
     "on_zoom = center_activations(net, model, x_pre, ch, [Pre]", [f"{C}::test_batched_measurement_matches_hooks"]),
    ("post-in-post-pre-swapped", "criteria.py", '"post_in": on_in[Post], "post_pre": on_pre[Post]', '"post_in": on_pre[Post], "post_pre": on_in[Post]',
     [f"{C}::test_batched_measurement_matches_hooks"]),
    ("zoom-nearest", "stream.py", 'return F.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False)',
     'return F.interpolate(crop, size=(size, size), mode="nearest")', [f"{C}::test_zoom_on_hand_made_image"]),
    # --- The network and its layers (docs/method.md section 1)
    # --- CORnet-S (issue 26): In_t, per-step BatchNorms, the stride switch
    ("cornet-in-is-previous-pre", "arch.py", 'f"{area}.norm_skip" if t == 0 else f"{area}.output_{t - 1}"',
     'f"{area}.norm_skip" if t == 0 else f"{area}.norm3_{t - 1}"', [f"{CO}::test_in_pre_post_of_every_step_equal_the_slow_paths"]),
    ("cornet-one-batchnorm-for-all-steps", "arch.py", 'norm1, norm2, norm3 = (area[f"norm{k}_{t}"] for k in (1, 2, 3))',
     'norm1, norm2, norm3 = (area[f"norm{k}_0"] for k in (1, 2, 3))', [f"{CO}::test_in_pre_post_of_every_step_equal_the_slow_paths"]),
    ("cornet-no-stride-switch", "arch.py", "    stride = 2 if t == 0 else 1\n", "    stride = 1\n",
     [f"{CO}::test_stride_switch_at_step_zero"]),
    ("cornet-folder-of-another-arch-accepted", "fzs.py", "    check_fz_folder(RESULTS, net)  # no FZs of another architecture in this folder\n",
     "", [f"{CO}::test_fixture_through_fzs_and_criteria_and_other_architectures_refused"]),
    ("onset-on-the-zoom-axis", "stats.py", "return np.where(reached.any(axis=-2), reached.argmax(axis=-2), r.shape[-2])",
     "return np.where(reached.any(axis=-1), reached.argmax(axis=-1), r.shape[-1])", [f"{ST}::test_latency_measures_on_planted_responses"]),
    ("onset-half-of-its-own-zoom", "stats.py", "peak = r.max(axis=(-2, -1), keepdims=True)", "peak = r.max(axis=-2, keepdims=True)",
     [f"{ST}::test_latency_measures_on_planted_responses"]),
    ("ablation-suffix-reruns-the-ablated-step", "ablate.py", "rows.append(run_suffix(net, model, xk, idx + 1)",
     "rows.append(run_suffix(net, model, xk, idx)", [f"{CO}::test_ablation_from_a_step_equals_hooks_on_the_full_model"]),
    ("center-off-by-one", "stream.py", "return fmap[:, :, fmap.shape[2] // 2, fmap.shape[3] // 2]",
     "return fmap[:, :, (fmap.shape[2] - 1) // 2, (fmap.shape[3] - 1) // 2]", [f"{S}::test_center_index_matches_lucent"]),
    ("pre-aliased-to-post", "stream.py", 'out["post"] = torch.relu(out["sum"])', 'out["post"] = torch.relu_(out["pre"].add_(out["in"]))',
     [f"{S}::test_pre_is_bn2_not_the_post_sum"]),
    ("no-normalisation", "stream.py", "    return (x - mean) / std", "    return x + 0 * mean * std",
     [f"{A}::test_counts_equal_independent_recomputation"]),
    # --- Feature visualisations (docs/method.md section 2)
    ("fold-without-running-stats", "fzs.py", "    m = copy.deepcopy(model)\n",
     "    m = copy.deepcopy(model)\n    for bn in m.modules():\n        if isinstance(bn, torch.nn.BatchNorm2d):\n            bn.reset_running_stats()\n",
     [f"{F}::test_folded_batchnorm_computes_the_same_layers"]),
    ("fold-drops-bn2", "fzs.py", "b.conv2, b.bn2 = fuse_conv_bn_eval(b.conv2, b.bn2), torch.nn.Identity()", "b.conv2, b.bn2 = b.conv2, torch.nn.Identity()",
     [f"{F}::test_folded_batchnorm_computes_the_same_layers"]),
    ("batch-seeded-by-first-channel", "fzs.py", "transform_seed(SEED, layer, kind, group)", "transform_seed(SEED, layer, kind, channels[0])",
     [f"{F}::test_image_depends_only_on_config_and_unit"]),
    ("spectrum-seeded-by-position", "fzs.py", "[unit_seed(SEED, layer, kind, c) for c in members]",
     "[unit_seed(SEED, layer, kind, i) for i, c in enumerate(members)]", [f"{F}::test_a_units_image_is_seeded_by_its_channel_and_its_batch"]),
    ("second-jitter-full", "fzs.py", "jitter(j // 2), center_crop(size)]", "jitter(j), center_crop(size)]",
     [f"{F}::test_engine_equals_lucent_render_vis"]),
    ("channel-mean-for-center", "fzs.py", "        return center(fmap)[rows, channels]", "        return fmap[rows, channels].mean(dim=(1, 2))",
     [f"{F}::test_engine_equals_lucent_render_vis"]),
    ("warp-align-corners", "fzs.py", "grid = F.affine_grid(theta, [b, c, h, w], align_corners=False)",
     "grid = F.affine_grid(theta, [b, c, h, w], align_corners=True)", [f"{F}::test_transforms_equal_kornia_041_bit_for_bit"]),
    ("rotation-sign", "fzs.py", "rot = torch.stack([cos, sin, -sin, cos], dim=-1)", "rot = torch.stack([cos, -sin, sin, cos], dim=-1)",
     [f"{F}::test_transforms_equal_kornia_041_bit_for_bit"]),
    ("pixel-units-without-minus-one", "fzs.py", "m[0, 0] = m[0, 0] * 2.0 / (w - 1.0)", "m[0, 0] = m[0, 0] * 2.0 / w",
     [f"{F}::test_transforms_equal_kornia_041_bit_for_bit"]),
    # --- Figures (docs/method.md section 6)
    ("mix-regions-old-strictness", "stats.py", "return m <= EQ2_LOW, mix, m >= EQ2_HIGH", "return m < EQ2_LOW, mix, m > EQ2_HIGH",
     [f"{P}::test_mix_histogram_regions_use_eq2s_bounds"]),
    ("fig2-line-at-a-scaled-ratio", "plot_ratios.py", "ax.axhline(ratio[0],", "ax.axhline(ratio[1],",
     [f"{P}::test_fig2_draws_the_values_of_the_ablation_json"]),
    ("grid-title-of-all-channels", "plot_grids.py", 'of = f"{total} channels" if measured == total', 'of = f"{total} channels" if True',
     [f"{P}::test_grid_titles_say_how_many_channels_were_measured"]),
    ("no-random-weights-stamp", "figures.py", '    if not is_random(weights):', "    if True:",
     [f"{P}::test_weights_of_and_stamp"]),
    ("undefined-m-binned-as-ratios", "plot_spectrum.py", "        ok = ~undefined\n", "        ok = np.ones_like(undefined)\n",
     [f"{P}::test_mix_histogram_regions_use_eq2s_bounds"]),
    ("dead-unit-at-zero-not-marked", "plot_grids.py", "dead = activation <= 0", "dead = activation < 0",
     [f"{P}::test_grids_print_each_fzs_activation_and_mark_dead_units"]),
    ("grid-mixes-configs", "plot_grids.py", "why = config_mismatch(reference, config, FZ_MATCH_KEYS)", "why = None",
     [f"{P}::test_grids_refuse_fzs_of_another_config"]),
    ("grid-suggestion-without-fz-settings", "plot_grids.py", "fzs_command(layers, net.name, weights, results, like, chans, objective)",
     "fzs_command(layers, net.name, weights, results, None, chans, objective)", [f"{P}::test_grids_suggest_commands_that_name_arch_weights_and_results"]),
    ("montage-column-major", "figures.py", "r, c = divmod(k, 3)", "c, r = divmod(k, 3)", [f"{P}::test_montage_places_images_row_by_row_best_first"]),
    ("spearman-is-pearson", "plot_spectrum.py", "scipy.stats.spearmanr(a, b)", "scipy.stats.pearsonr(a, b)",
     [f"{P}::test_spearman_by_hand", f"{P}::test_scipy_ranks_and_spearman_match_a_hand_written_reference"]),
    # --- Figures that read at any size (issue 24: what a newcomer meets): layout read on the artists at 1, 4 and 128 channels
    ("watermark-at-the-middle", "figures.py", "    mark.set_y(watermark_spot(fig, mark, titles))", "    mark.set_y(0.5)",
     [f"{P}::test_grid_pages_watermark_hides_no_title", f"{P}::test_tuning_curve_pages_fit_their_panels"]),
    ("watermark-diagonal", "figures.py", 'weight="bold", ha="center", va="center", zorder=100)', 'weight="bold", rotation=20, ha="center", va="center", zorder=100)',
     [f"{P}::test_grid_pages_watermark_hides_no_title"]),
    ("tuning-page-always-4x4", "plot_tuning.py", "ncols, nrows = min(4, len(chunk)), -(-len(chunk) // 4)", "ncols, nrows = 4, 4",
     [f"{P}::test_tuning_curve_pages_fit_their_panels"]),
    ("pre-drawn-like-post", "plot_tuning.py", 'dict(marker="s", ms=4.5, mfc="none", lw=1.6, ls="--")', 'dict(marker="o", ms=2, lw=0.9)',
     [f"{P}::test_tuning_curve_pages_fit_their_panels"]),
    ("zoom-jitter-beyond-what-is-said", "plot_tuning.py", "rng.uniform(-JITTER, JITTER, len(v))", "rng.uniform(-0.08, 0.08, len(v))",
     [f"{P}::test_tuning_zoom_says_it_jitters"]),
    ("hist-bins-straddle-eq2-bounds", "plot_spectrum.py", "    edges = bin_edges(mix_clip, bins)\n", "    edges = np.linspace(0, mix_clip, bins + 1)\n",
     [f"{P}::test_spectrum_layout"]),
    ("hist-two-thirds-binned-as-mix", "plot_spectrum.py", "    edges[np.isclose(edges, EQ2_LOW, rtol=0, atol=1e-12)] = np.nextafter(EQ2_LOW, np.inf)\n", "",
     [f"{P}::test_mix_histogram_regions_use_eq2s_bounds"]),
    ("hist-fractional-count-ticks", "plot_spectrum.py", "        ax.yaxis.set_major_locator(MaxNLocator(integer=True))  # counts\n", "",
     [f"{P}::test_spectrum_layout"]),
    ("rho-over-convention-values", "plot_spectrum.py", '    ok = ~(t["undefined_in"] | t["undefined_pre"])\n    return spearman(',
     '    ok = np.ones(len(t["mix"]), bool)\n    return spearman(', [f"{P}::test_spectrum_layout"]),
    ("conventions-unnamed-in-legend", "plot_spectrum.py", 'f"m := {m} by convention where {where} (not a ratio: not in', 'f"undefined m ({m}, {where}) (',
     [f"{P}::test_spectrum_layout"]),
    ("scatter-x-ticks-default", "plot_spectrum.py", "        ax.xaxis.set_major_locator(MaxNLocator(nbins=4))  # few x ticks: the weights' labels are long\n",
     "", [f"{P}::test_spectrum_layout"]),
    ("pass-frequency-fractional-channels", "plot_spectrum.py", "        ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=6, min_n_ticks=1))",
     "        pass", [f"{P}::test_spectrum_layout"]),
    ("empty-pass-frequency-unsaid", "plot_spectrum.py", "        if not (f > 0).any():", "        if False:", [f"{P}::test_spectrum_layout"]),
    ("ratio-ticks-default", "plot_ratios.py", "            ax.yaxis.set_major_locator(MaxNLocator(nbins=6, steps=[1, 2, 5, 10]))\n", "",
     [f"{P}::test_ratio_ticks_have_at_most_three_decimals"]),
    ("atlas-images-first", "atlas.py", "        return channel + numbers + images", "        return channel + images + numbers",
     [f"{AT}::test_criteria_columns_visible_at_1400_px"]),
    ("atlas-channel-column-scrolls-away", "atlas.py", "#units td:first-child{position:sticky;left:0;", "#units td:first-child{position:static;left:0;",
     [f"{AT}::test_criteria_columns_visible_at_1400_px"]),
    ("atlas-convention-as-a-ratio", "atlas.py", "        if convention:  # not a ratio", "        if False:  # not a ratio",
     [f"{AT}::test_convention_mix_values_shown_as_such_and_sorted_last"]),
    ("atlas-conventions-sorted-with-blanks", "atlas.py", "(r.dataset[col+'Convention']!==undefined?1:2)", "(2)",
     [f"{AT}::test_convention_mix_values_shown_as_such_and_sorted_last"]),
    ("atlas-estimate-per-unit-not-per-step", "atlas.py", "return units * steps / CPU_FZ_RATE,", "return units / CPU_FZ_RATE,",
     [f"{AT}::test_missing_pieces_say_how_long_they_take"]),
    ("atlas-estimate-without-gpu", "atlas.py", "{duration(gpu)} on one GPU, projected", "on a GPU: faster",
     [f"{AT}::test_missing_pieces_say_how_long_they_take"]),
    # --- Reliability and messages (issue: reliability and the newcomer's path)
    ("no-lock", "results.py", "fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)", "pass",
     [f"{R}::test_a_second_fzs_on_the_same_folder_is_refused_and_a_kill_leaves_no_stale_lock"]),
    ("save-to-a-path", "results.py", "        with open(tmp, \"wb\") as f:\n            torch.save(obj, f)", "        torch.save(obj, tmp)",
     [f"{R}::test_result_files_are_byte_reproducible"]),
    ("made-count-without-the-final-file", "fzs.py", "            made += sum(c in done for c in channels)",
     "            made += sum(c in done and not (old and c in old['channels'].tolist()) for c in channels)", [f"{F}::test_end_to_end_file"]),
    ("leftover-parts-ignored", "fzs.py", "            for part in parts_of(net, RESULTS, layer, kind, cfg).values():",
     "            for part in []:", [f"{R}::test_a_rerun_finishes_a_merge_a_dead_process_left_half_done"]),
    ("channel-step-zero-as-one", "arch.py", "if len(parts) == 3 and parts[2] is not None and parts[2] < 1:", "if False:",
     [f"{F}::test_bad_input_is_one_line_error"]),
    ("error-split-at-imageerror", "imagenet.py", 'die(text[text.rindex("cannot read image"):].splitlines()[0] if "cannot read image" in text else "cannot read an image")',
     'die(text.splitlines()[-1].split("ImageError: ", 1)[-1])', [f"{A}::test_unreadable_image_is_one_line"]),
    ("impossible-rule-undetected", "ablate.py", "if not accepted(rules[b], 0, passing_hits, len(on)):", "if False:",
     [f"{A}::test_refusals_and_the_cap"]),
    ("refusal-reasons-not-printed", "criteria.py", 'print(f"block {block}: not measured: {reason}", file=sys.stderr)', "pass",
     [f"{C}::test_every_refusal_prints_its_reason"]),
    ("suggestion-without-settings", "criteria.py", "like = load_fz(net, results, other[0]) if other else first_fz()",
     "like = load_fz(net, results, other[0]) if other else None", [f"{C}::test_run_refuses_mixed_configs_and_names_the_missing_fzs"]),
    ("merge-ignores-png", "fzs.py", "    if png:\n", "    if False:\n", [f"{F}::test_end_to_end_file"]),
    ("passing-without-criteria-not-refused", "fzs.py", 'crit = read_criteria(results, net, required="--channels passing needs it")',
     "crit = read_criteria(results, net) or {}", [f"{F}::test_bad_input_is_one_line_error"]),
    # --- Fig. 2 without its built-in bias (issue: held-out screening, more trials, a test of the claim)
    ("split-by-position-not-class", "ablate.py", "report = np.sort(order[np.floor((k + 1) * fraction) > np.floor(k * fraction)])",
     "report = np.sort(order[k < int(fraction * len(order))])", [f"{A}::test_stratified_split_is_stratified_and_reproducible"]),
    ("heldout-reported-on-screening-images", "ablate.py", 'images["heldout"] = (screen, report)', 'images["heldout"] = (screen, screen)',
     [f"{A}::test_heldout_cells_are_counted_on_heldout_images_only"]),
    ("unscreened-takes-the-accepted-sets", "ablate.py", "chosen[v, b] = list(range(min(n_trials, len(draws[b]))))",
     'chosen[v, b] = chosen["paper", b]', [f"{A}::test_screening_accepts_some_and_rejects_others"]),
    ("bootstrap-without-images", "stats.py", "weights = np.bincount(draw.ravel(), minlength=b * n).reshape(b, n).astype(np.float32)",
     "weights = np.ones((b, n), dtype=np.float32)", [f"{A}::test_bootstrap_interval_on_planted_hits"]),
    ("p-value-wrong-tail", "stats.py", 'n_resamples=permutations, alternative="less"', 'n_resamples=permutations, alternative="greater"',
     [f"{A}::test_sign_flip_p_values_on_planted_differences", f"{ST}::test_sign_flips_on_a_known_effect_and_seeded"]),
    ("p-value-two-sided", "stats.py", 'n_resamples=permutations, alternative="less"', 'n_resamples=permutations, alternative="two-sided"',
     [f"{ST}::test_exact_sign_flip_p_equals_the_enumeration"]),
    ("sign-flips-as-relabellings", "stats.py", 'permutation_type="samples", vectorized=True',
     'permutation_type="pairings", vectorized=True', [f"{ST}::test_exact_sign_flip_p_equals_the_enumeration"]),
    ("mann-whitney-one-sided", "stats.py", 'batch=1000, alternative="greater"', 'batch=1000, alternative="less"',
     [f"{ST}::test_clearly_shifted_samples_give_auc_near_one_and_a_small_p"]),
    ("mann-whitney-signed-distance", "stats.py", "return np.abs(mannwhitneyu(a, b, axis=axis, method=\"asymptotic\").statistic - pairs / 2)",
     "return mannwhitneyu(a, b, axis=axis, method=\"asymptotic\").statistic - pairs / 2",
     [f"{ST}::test_clearly_shifted_samples_give_auc_near_one_and_a_small_p"]),
    ("auc-of-the-other-sample", "stats.py", 'return float(mannwhitneyu(x, y, method="asymptotic").statistic / pairs), float(test.pvalue)',
     'return float(mannwhitneyu(y, x, method="asymptotic").statistic / pairs), float(test.pvalue)',
     [f"{ST}::test_auc_equals_the_tie_averaged_ranks_exactly"]),
    ("fig2-variants-not-same-y", "plot_ratios.py", "        for ax in drawn:\n            ax.set_ylim(lo, hi)", "        pass",
     [f"{P}::test_fig2_draws_the_variants_below_the_papers"]),
    # --- Beyond the paper: tuning on natural images (tuning.py)
    ("si-without-the-minimum", "stats.py", "1 - (top - low) / np.where(top > 0, top, 1.0)", "1 - top / np.where(top > 0, top, 1.0)",
     [f"{TU}::test_analogues_and_index_on_planted_values"]),
    ("eq1n-without-relu", "tuning.py", "diff = np.where(ok, pre_zoomed - np.maximum(pre, 0.0), 0.0)", "diff = np.where(ok, pre_zoomed - pre, 0.0)",
     [f"{TU}::test_analogues_and_index_on_planted_values"]),
    ("eq2n-zero-denominator-kept", "tuning.py", "return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)",
     "return np.where(den != 0, num / np.where(den != 0, den, 1.0), np.inf)", [f"{TU}::test_analogues_and_index_on_planted_values"]),
    ("zoom-out-padded-black", "imagenet.py", "fill = tuple(round(255 * m) for m in MEAN)", "fill = (0, 0, 0)",
     [f"{TU}::test_zoom_views_equal_torchvision_on_pil"]),
    ("top-k-lowest", "stats.py", "return np.argsort(-acts.astype(np.float32), axis=0, kind=\"stable\")[:k]",
     "return np.argsort(acts.astype(np.float32), axis=0, kind=\"stable\")[:k]", [f"{TU}::test_unit_sets_are_unions_of_the_three_top_k"]),
    ("crops-alias-ignored", "cli.py", "            if getattr(args, name) is None:\n                setattr(args, name, text)\n",
     "            pass\n", [f"{A}::test_old_scales_flag_sets_the_crops_with_a_note"]),
    ("resume-from-the-first-image", "imagenet.py", 'for batch in guarded(loader_at(state["done"])):', "for batch in guarded(loader_at(0)):",
     [f"{A}::test_run_pass_resumes_from_partial_counts"]),
    ("curves-over-the-whole-set", "tuning.py", "own = np.where(member[..., None], values.transpose(0, 2, 1, 3), np.nan)",
     "own = np.where((member | True)[..., None], values.transpose(0, 2, 1, 3), np.nan)", [f"{TU}::test_each_image_once_and_equal_to_hooks_per_unit"]),
    # --- In and Post before the ReLU, as the released scripts (--post_as_released; docs/differences.md)
    ("released-reads-post", "stream.py", 'return i, "sum" if post_as_released and role == "post" else role', "return i, role",
     [f"{S}::test_released_reading_is_the_sum_before_the_relu", f"{C}::test_released_reading_matches_relu_input_hooks"]),
    ("released-sum-after-relu", "stream.py", 'out["sum"] = out["pre"] + out["in"]', 'out["sum"] = torch.relu(out["pre"] + out["in"])',
     [f"{S}::test_released_reading_is_the_sum_before_the_relu"]),
    ("released-fz-objective-post", "fzs.py", 'return target, bool(cfg.get("post_as_released", False)) and target == layer',
     "return target, False", [f"{F}::test_released_post_option_optimises_the_sum_before_the_relu"]),
    ("released-alias-reads-sum", "fzs.py", 'return target, bool(cfg.get("post_as_released", False)) and target == layer',
     'return target, bool(cfg.get("post_as_released", False))', [f"{F}::test_released_post_option_optimises_the_sum_before_the_relu"]),
    ("released-stored-objective-post", "fzs.py", "kind, device, POST_AS_RELEASED))  # the whole batch", "kind, device))  # the whole batch",
     [f"{F}::test_fzs_py_released_run_records_the_sum"]),
    ("released-criteria-reads-post", "criteria.py", "read = dict(bar=bar, post_as_released=post_as_released)", "read = dict(bar=bar)",
     [f"{C}::test_released_reading_matches_relu_input_hooks"]),
    ("released-fzs-not-checked", "criteria.py", "        why = released_problem(cfg, post_as_released)\n", "        why = None\n",
     [f"{C}::test_released_and_paper_fzs_are_never_mixed"]),
    ("released-flag-not-passed-to-criteria", "criteria.py", "mix_if,\n                              post_as_released=POST_AS_RELEASED)",
     "mix_if)", [f"{C}::test_released_and_paper_fzs_are_never_mixed"]),
    ("released-tuning-reads-post", "tuning.py", "got = read_center(net, model, x, net.layers, post_as_released)",
     "got = read_center(net, model, x, net.layers)", [f"{TU}::test_released_reading_equals_relu_input_hooks_and_is_never_mixed"]),
    ("released-atlas-fzs-not-checked", "atlas.py", "    check_released(data.get(\"config\", {}), fz_file(results, layer, objective), post_as_released)\n",
     "", [f"{AT}::test_released_inputs_are_labelled_and_never_mixed"]),
    ("released-crop-flag-ignored", "imagenet.py", "TF.center_crop(base, crop_size(p, released_crop))", "TF.center_crop(base, crop_size(p))",
     [f"{A}::test_released_crop_option_equals_the_released_transform"]),
    ("released-crop-rounding", "imagenet.py", "return (224 * (100 - int(percent))) // 100", "return 224 - (224 * int(percent)) // 100",
     [f"{A}::test_released_crop_option_equals_the_released_transform"]),
    ("released-crop-default-missing", "results.py", '"post_as_released": False, "crop_as_released": False}', '"post_as_released": False}',
     [f"{A}::test_released_crop_cells_are_never_mixed"]),
    ("released-crop-not-passed-to-the-loader", "ablate.py", "batch, WORKERS, device, CROP_AS_RELEASED)", "batch, WORKERS, device)",
     [f"{A}::test_the_crop_flag_reaches_the_loader_and_the_cells"]),
    ("released-top1-misaligned", "ablate.py", "RELEASED_TOP1[b][RELEASED_CROPS.index(s)]", "RELEASED_TOP1[b][k]",
     [f"{A}::test_the_released_top1_is_printed_beside_ours_for_its_weights"]),
    # --- The paper's channel lists as a reference (criteria.py)
    ("paper-overlap-counts-unmeasured", "criteria.py", "    seen = paper & measured\n", "    seen = paper\n",
     [f"{C}::test_overlap_with_the_papers_lists_on_planted_sets"]),
    # --- Beyond ResNet18: the table derived from the model (arch.py), Bottleneck Pre (stream.block_forward)
    ("bottleneck-pre-is-bn2", "stream.py", 'if hasattr(block, "bn3"):  # Bottleneck: 1x1, 3x3, 1x1', "if False:",
     [f"{AR}::test_truncated_reader_equals_hooks"]),
    ("jitter-rule-by-stage-only", "arch.py", "if stage == 1 or (stage == 2 and position == 0):", "if stage == 1:",
     [f"{AR}::test_jitter_rule_reproduces_the_resnet18_table"]),
    ("resnet18-block-1.0-probed", "arch.py", 'else previous\n', 'else (previous or name)\n',
     [f"{AR}::test_resnet18_table_is_the_papers"]),
    # --- ARCH in every script (issue "Beyond ResNet18")
    ("weights-id-drops-arch", "results.py", 'return name if arch_name == "resnet18" else f"{arch_name}:{name}"', "return name",
     [f"{AR}::test_weights_ids_carry_the_architecture"]),
    ("arch-never-checked", "arch.py", "        if made != self.name:\n", "        if False:\n",
     [f"{AR}::test_tiny_resnet50_end_to_end_and_mixing_refused"]),
    ("where-accepts-unprobed", "arch.py", "        if layer not in self.place:\n            self.unknown(layer)\n        return self.place[layer]",
     "        return self.place.get(layer, (0, 'post'))",
     ["tests/test_stream.py::test_unknown_layer_is_one_line_error"]),
    ("bottleneck-fold-skips-bn3", "fzs.py", 'if hasattr(b, "bn3"):  # Bottleneck', "if False:",
     [f"{AR}::test_folding_covers_the_bottleneck"]),
    ("relative-depth-zero-based", "plot_spectrum.py", 'return (residual.index(block if arch_name == arch.CORNET else f"layer{block}") + 1) / len(residual)',
     'return residual.index(block if arch_name == arch.CORNET else f"layer{block}") / len(residual)', [f"{AR}::test_passing_percent_by_relative_depth_across_architectures"]),
    ("sweep-blocks-smallest-fraction", "ablate.py", "key=lambda b: (-fraction[b], list(net.blocks).index(b)))[:2]",
     "key=lambda b: (fraction[b], list(net.blocks).index(b)))[:2]", [f"{AR}::test_sweep_default_blocks"]),
    # --- ImageNet as users have it (imagenet.py) and the atlas (atlas.py)
    ("devkit-ids-zero-based", "imagenet.py", "put(f\"ILSVRC2012_val_{i:08d}\", WNID_INDEX[wnids[k - 1]], n)",
     "put(f\"ILSVRC2012_val_{i:08d}\", WNID_INDEX[wnids[k % 1000]], n)", [f"{IM}::test_every_layout_and_label_form_gives_the_prepared_mapping"]),
    ("duplicate-label-overwrites", "imagenet.py", "        if name in table:\n", "        if False:\n",
     [f"{IM}::test_bad_label_files_name_the_file_and_the_line"]),
    ("id-map-file-ignored", "imagenet.py", "    if not id_map:\n        return ILSVRC_IDS", "    if True:\n        return ILSVRC_IDS",
     [f"{IM}::test_every_layout_and_label_form_gives_the_prepared_mapping"]),
    ("layouts-sorted-by-path", "imagenet.py", "key=lambda i: (os.path.basename(paths[i]), paths[i])", "key=lambda i: paths[i]",
     [f"{IM}::test_every_layout_and_label_form_gives_the_prepared_mapping"]),
    ("kaggle-last-token", "imagenet.py", "wnid = row[1].split()[0] if", "wnid = row[1].split()[-1] if",
     [f"{IM}::test_every_layout_and_label_form_gives_the_prepared_mapping"]),
    ("atlas-filter-ignores-mix", "atlas.py", "(isNaN(lo)||(m!==null&&m>=lo))", "(true)", [f"{AT}::test_sorting_and_filtering_in_chromium"]),
    ("atlas-sort-ignores-direction", "atlas.py", "*(desc?-1:1)", "*1", [f"{AT}::test_sorting_and_filtering_in_chromium"]),
    ("atlas-top9-of-post-only", "atlas.py", "src = montages.get(layers[r], {}).get(c)", "src = montages.get(Post, {}).get(c)",
     [f"{AT}::test_block_page_renders_rows_and_images_in_chromium"]),
    # --- Devices and precision (issue: the main job on a CUDA machine); tests/test_device.py fakes torch.cuda
    ("auto-device-without-index", "cli.py", '    return torch.device("cuda", index)\n', "    return device\n",
     [f"{D}::test_auto_gives_an_indexed_device_that_set_device_takes"]),
    ("torchrun-rank-beyond-gpus-accepted", "cli.py", "        if local >= count:", "        if False:",
     [f"{D}::test_torchrun_rank_without_a_gpu_is_refused"]),
    ("explicit-device-under-torchrun-accepted", "cli.py", "        if device.index is not None:\n", "        if False:\n",
     [f"{D}::test_explicit_device_under_torchrun_is_refused"]),
    ("tf32-left-on-under-fp32", "cli.py", '    set_tf32(prec == "tf32", backends)', "    pass",
     [f"{D}::test_tf32_only_under_tf32"]),
    ("auto-bf16-without-gpu-support", "cli.py", 'if amp == "bf16" and device.type == "cuda" and cuda.get_device_capability(device)[0] < 8:',
     'if False:', [f"{D}::test_precision_auto"]),
    ("auto-means-bf16", "cli.py", 'amp = env.get("AMP_AUTO", "") or "fp32"', 'amp = env.get("AMP_AUTO", "") or "bf16"',
     [f"{D}::test_precision_auto"]),
    ("ranks-over-nccl-default-timeout", "cli.py", 'dist.init_process_group("gloo", timeout=datetime.timedelta(hours=RANK_TIMEOUT_HOURS))',
     'dist.init_process_group("nccl", timeout=datetime.timedelta(minutes=10))', [f"{D}::test_ranks_meet_over_gloo_with_a_long_timeout"]),
    ("subset-batches-not-whole", "fzs.py", "batch_members(group, BATCH, n_units)))", "[c for c in todo if c // BATCH == group]))",
     [f"{F}::test_subset_equals_full_when_rounding_depends_on_the_batch_size"]),
    ("streams-share-one-draw", "fzs.py", "        states.append((np.random.RandomState(tseed), image,",
     "        states.append((np.random.RandomState(groups[0][2]), image,", [f"{F}::test_several_batches_at_once_equal_one_at_a_time"]),
    ("compile-limit-not-raised", "fzs.py", "    limit = 8 * n_targets + 8\n", "    limit = 0\n",
     [f"{F}::test_compile_makes_one_graph_per_target_without_breaks"]),
    ("batch-auto-ignores-free-memory", "cli.py", "    n = int(free * fraction // max(1, per_item_bytes)) // 32 * 32",
     "    n = cpu_default", [f"{D}::test_batch_auto_fills_the_card"]),
    # --- Faults a cluster user meets (issue: the house)
    ("workers-keep-the-lock", "imagenet.py", "                                       worker_init_fn=release_inherited_locks,\n", "",
     [f"{R}::test_a_rerun_right_after_kill_9_is_not_refused_while_workers_die"]),
    ("sigterm-not-handled", "cli.py", "    signal.signal(signal.SIGTERM, _terminate)", "    pass",
     [f"{R}::test_sigterm_saves_what_ctrl_c_saves"]),
    ("full-disk-traceback", "results.py", "            raise\n        die(f\"no space left in {folder}", "            raise\n        raise\n        die(f\"no space left in {folder}",
     [f"{R}::test_a_full_disk_is_a_one_line_error_that_keeps_what_was_finished"]),
    ("paper-screening-rules-on-any-arch", "ablate.py", 'if net.name != "resnet18" and spec == PAPER_SCREEN_MARGIN:',
     "if False:", [f"{AR}::test_sweep_default_blocks"]),
    # --- The house (issue 23): flags above the marked line, one reader of every result file
    ("flags-below-the-line", "cli.py", "        if node.lineno >= end:\n            break\n", "        if False:\n            break\n",
     [f"{S}::test_configure_overrides_constants"]),
    ("random-not-random0", "results.py", '    return "random:0" if made == "random" else made',
     "    return made", [f"{S}::test_shared_readers_refuse_other_weights_and_architectures"]),
    ("reader-ignores-weights", "results.py", "    if weights_id is not None and not same_weights(made, weights_id):", "    if False:",
     [f"{S}::test_shared_readers_refuse_other_weights_and_architectures"]),
    # --- What a newcomer meets (issue 24): the command line, the weights from the inputs, nothing to draw, the method page
    ("weights-ignore-inputs", "results.py", '    return default if made == "unknown" else weights_flag(made)', "    return default",
     [f"{S}::test_the_weights_to_load_come_from_the_inputs", f"{A}::test_refusals_and_the_cap"]),
    ("named-weights-unchecked", "results.py", "    if made_ids and name is not None and name not in {split_weights_id(m)[1] for m in made_ids}:",
     "    if False:", [f"{S}::test_the_weights_to_load_come_from_the_inputs", f"{C}::test_the_weights_come_from_the_inputs"]),
    ("runs-of-other-configs-mixed", "criteria.py", '                diff = other and config_mismatch(other, c, [k for k in FZ_MATCH_KEYS if k != "seed"])',
     "                diff = None", [f"{C}::test_the_weights_come_from_the_inputs"]),
    ("missing-summary-command-without-results", "results.py", '        die(f"missing {path}: make it with {natural_command(net.name, weights_id, results)}")',
     '        die(f"missing {path}: make it with python ablate.py --stages natural")',
     [f"{NC}::test_a_missing_input_names_the_command_for_this_results_folder", f"{TU}::test_refusals_are_one_line"]),
    ("flags-abbreviated-silently", "cli.py", "RawDescriptionHelpFormatter, allow_abbrev=False)", "RawDescriptionHelpFormatter, allow_abbrev=True)",
     [f"{NC}::test_a_mistyped_flag_is_one_line_with_the_closest_flag"]),
    ("si-legend-on-the-bars", "plot_tuning.py", "        ax.set_ylim(0, 1.45 * max(", "        ax.set_ylim(0, 1.0 * max(",
     [f"{P}::test_tuning_si_legend_clear_of_the_bars_and_silent_channels_counted"]),
    ("tuning-ylabel-over-the-ticks", "plot_tuning.py", "fig.tight_layout(rect=(0.25 / W, 0.6 / H,", "fig.tight_layout(rect=(0, 0.6 / H,",
     [f"{P}::test_tuning_curve_pages_fit_their_panels"]),
    ("mix-hist-without-edges", "plot_spectrum.py", 'edgecolor="white", lw=0.5)  # edges', 'edgecolor="white", lw=0)  # edges',
     [f"{P}::test_spectrum_layout"]),
    ("silent-curve-prefers-the-first-zoom", "stats.py", "    return np.where(curve.max(-1) > 0, np.asarray(zoom, dtype=np.float64)[np.argmax(curve, axis=-1)], np.nan)",
     "    return np.asarray(zoom, dtype=np.float64)[np.argmax(curve, axis=-1)]", [f"{TU}::test_analogues_and_index_on_planted_values"]),
    ("shared-fixture-model-changed-in-place", "tests/test_crosscoder.py", "    model = copy.deepcopy(fixture_model).to(memory_format=torch.channels_last)",
     "    model = fixture_model.to(memory_format=torch.channels_last)",
     ["tests/test_crosscoder.py::test_data_stage_resumes_after_an_interruption_to_the_same_arrays"]),
    ("pass-frequency-unguarded", "plot_spectrum.py", 'if any(len(s.get("pass_frequency", [])) for s in stability.get("blocks", {}).values()):',
     "if True:", [f"{P}::test_a_stability_report_without_blocks_is_a_note"]),
    ("ablate-weights-from-summary-only", "ablate.py", '([read_criteria(RESULTS, net)] if "sweep" in STAGES else [])', "[]",
     [f"{A}::test_refusals_and_the_cap"]),
    ("help-default-twice", "cli.py", '    return comment if said or str(shown) == "" else f"{comment} (default: {shown})"',
     '    return f"{comment} (default: {shown})"', [f"{NC}::test_help_has_no_duplicated_or_empty_default", f"{NC}::test_the_help_entries_are_read"]),
    ("typo-without-closest-flag", "cli.py", "    return near[0] if near else None", "    return None",
     [f"{NC}::test_a_mistyped_flag_is_one_line_with_the_closest_flag"]),
    ("typo-gets-argparse-usage", "cli.py", '        self.exit(2, f"error: {message} (python {self.prog} --help lists the flags)\\n")',
     "        super().error(message)", [f"{NC}::test_a_mistyped_flag_is_one_line_with_the_closest_flag"]),
    ("criteria-default-weights-ignore-inputs", "criteria.py", 'weights = weights_flag(next(iter(found))) if found else "IMAGENET1K_V1"',
     'weights = "IMAGENET1K_V1"', [f"{C}::test_the_weights_come_from_the_inputs"]),
    ("criteria-inputs-may-disagree", "criteria.py", "    if len(found) > 1:\n", "    if len(found) > 9:\n",
     [f"{C}::test_the_weights_come_from_the_inputs"]),
    ("criteria-checkpoint-id-as-flag", "results.py", '    if name.startswith("file:"):\n', '    if name.startswith("nofile:"):\n',
     [f"{C}::test_a_checkpoint_recorded_by_the_inputs_is_asked_for"]),
    ("command-with-unknown-weights", "results.py", 'if weights not in (None, "", "unknown") else "IMAGENET1K_V1"',
     'if weights is not None else "IMAGENET1K_V1"', [f"{NC}::test_no_suggested_command_carries_an_unknown_weights_id"]),
    ("grids-of-nothing-drawn", "plot_grids.py", "    if not any(image is not None for grids", "    if False and not any(image is not None for grids",
     [f"{NC}::test_plot_grids_with_no_fzs_names_the_command_and_draws_nothing"]),
    ("method-section-missing", "docs/method.md", "## 6. Figures", "## Figures", [f"{DO}::test_every_cited_section_of_the_method_exists"]),
    ("smoke-writes-into-results", "README.md", "--objectives center,channel --steps 16 --results results_smoke\n",
     "--objectives center,channel --steps 16\n", [f"{R}::test_readme_smoke_pipeline_makes_every_figure_with_content"]),
    # --- Beyond channels: group crosscoders (crosscoder.py, issue 25)
    ("cc-zoom-axis-reversed", "crosscoder.py", '"preferred": preferred_zoom(norms, zoom),', '"preferred": preferred_zoom(norms, zoom[::-1]),',
     [f"{CC}::test_reading_on_a_hand_made_decoder"]),
    ("cc-in-pre-swapped", "crosscoder.py", 'is_sum = summation(si_post, r["preferred"][:, 0], r["preferred"][:, 1],',
     'is_sum = summation(si_post, r["preferred"][:, 1], r["preferred"][:, 0],', [f"{CC}::test_reading_on_a_hand_made_decoder"]),
    ("cc-encoder-wrong-blocks", "stream.py", "return np.concatenate([r * Z * C + one * C + np.arange(C) for r in range(3)])",
     "return np.concatenate([r * Z * C + np.arange(C) for r in range(3)])", [f"{CC}::test_the_encoder_reads_the_blocks_it_says"]),
    ("cc-no-block-normalisation", "crosscoder.py", "return np.where(var > 0, np.sqrt(np.where(var > 0, var, 1.0)), 1.0)",
     "return np.ones_like(var)", [f"{CC}::test_block_scales_make_the_loss_the_mean_of_one_minus_fve"]),
    ("cc-alignment-on-in", "crosscoder.py", "post_dir = unit(post_b)", "post_dir = unit(in_b)",
     [f"{CC}::test_reading_on_a_hand_made_decoder", f"{CC}::test_planted_latents_are_recovered_and_typed"]),
    ("cc-topk-over-batch", "crosscoder.py",
     "    top = pre.topk(k, dim=1)\n    return torch.zeros_like(pre).scatter(1, top.indices, torch.relu(top.values)), pre",
     "    top = pre.flatten().topk(k * len(pre))\n    return torch.zeros_like(pre).flatten().scatter(0, top.indices, torch.relu(top.values)).view_as(pre), pre",
     [f"{CC}::test_topk_is_per_sample"]),
    ("cc-auxk-on-live-latents", "crosscoder.py", "masked = torch.where(dead[None], pre,", "masked = torch.where(~dead[None], pre,",
     [f"{CC}::test_auxk_trains_the_dead_latents_only"]),
    ("cc-summation-without-the-cosine", "crosscoder.py", "(np.asarray(cos_in_pre) >= sum_cos)", "(np.asarray(cos_in_pre) >= -1)",
     [f"{CC}::test_reading_on_a_hand_made_decoder"]),
    ("cc-summation-without-post-invariance", "crosscoder.py",
     "return (np.nan_to_num(si_post, nan=-np.inf) >= si_min) & (np.asarray(preferred_in) < np.asarray(preferred_pre)) & \\",
     "return (np.asarray(preferred_in) < np.asarray(preferred_pre)) & \\", [f"{CC}::test_reading_on_a_hand_made_decoder"]),
    ("cc-data-zooms-reversed", "crosscoder.py", "arrays[layer][first:first + len(index), z] =", "arrays[layer][first:first + len(index), Z - 1 - z] =",
     [f"{CC}::test_data_stage_equals_torchvision_and_hooks"]),
    ("cc-resume-without-adam-state", "crosscoder.py", '        opt.load_state_dict(state["opt"])\n', "",
     [f"{CC}::test_training_stopped_at_a_chosen_step_resumes_to_the_same_bytes", f"{CC}::test_two_runs_give_the_same_bytes_and_a_kill_resumes_to_them"]),
    ("cc-stop-saves-a-half-taken-step", "crosscoder.py", "        if whole:  # else the last checkpoint stands", "        if True:  # else",
     [f"{CC}::test_training_stopped_at_a_chosen_step_resumes_to_the_same_bytes"]),
    ("cc-resume-log-as-read-back", "crosscoder.py", '[log_entry(**e) for e in state["log"]]  # resumed or not', 'state["log"]  # resumed or not',
     [f"{CC}::test_training_stopped_at_a_chosen_step_resumes_to_the_same_bytes"]),
    ("cc-alignment-passing-swapped", "crosscoder.py", "hit = np.isin(channel, sorted(passing))", "hit = ~np.isin(channel, sorted(passing))",
     [f"{CC}::test_reading_on_a_hand_made_decoder"]),
    ("cc-type-other-never", "crosscoder.py", 'post_small = r["norms"][:, 2].max(-1) < post_min * r["norms"].max((1, 2))',
     'post_small = r["norms"][:, 2].max(-1) < 0', [f"{CC}::test_reading_on_a_hand_made_decoder"]),
    ("cc-fve-against-zero", "crosscoder.py", "var = ((x - x_hat) ** 2).sum((0, 3)), ((x - mean) ** 2).sum((0, 3))",
     "var = ((x - x_hat) ** 2).sum((0, 3)), (x ** 2).sum((0, 3))", [f"{CC}::test_block_scales_make_the_loss_the_mean_of_one_minus_fve"]),
    ("cc-top9-lowest", "crosscoder.py", "top9 = np.argsort(-all_codes, axis=0", "top9 = np.argsort(all_codes, axis=0",
     [f"{CC}::test_planted_latents_are_recovered_and_typed"]),
    ("cc-profile-not-cosine", "crosscoder.py", "    u = unit(np.asarray(dec, dtype=np.float64))\n", "    u = np.asarray(dec, dtype=np.float64)\n",
     [f"{CC}::test_reading_on_a_hand_made_decoder"]),
    ("cc-heldout-in-training", "crosscoder.py", "return np.sort(order[held:]), np.sort(order[:held])", "return np.sort(order), np.sort(order[:held])",
     [f"{CC}::test_the_held_out_split_is_disjoint_seeded_and_its_size"]),
    ("cc-data-resume-from-the-first-image", "crosscoder.py",
     "resumable_pass(lambda done: image_loader(dataset, batch, workers, device, start=done), step, state, checkpoint, n, every,",
     "resumable_pass(lambda done: image_loader(dataset, batch, workers, device, start=0), step, state, checkpoint, n, every,",
     [f"{CC}::test_data_stage_resumes_after_an_interruption_to_the_same_arrays"]),
    # --- The latent objective (fzs.py --objectives latent, issue 25)
    ("latent-reads-the-wrong-role", "fzs.py", "v = torch.stack([center(got[layer]).float() for layer in layers], 1)",
     "v = torch.stack([center(got[layer]).float() for layer in (layers[0], layers[0], layers[2])], 1)",
     [f"{F}::test_latent_fzs_store_the_encoder_pre_activation_and_raise_it"]),
    ("latent-without-the-scale", "fzs.py", "for layer in layers], 1) / scale[None, :, None]  # (B, 3, C)", "for layer in layers], 1)  # (B, 3, C)",
     [f"{F}::test_latent_fzs_store_the_encoder_pre_activation_and_raise_it"]),
    ("latent-at-another-zoom", "fzs.py", "        sample[:, :, one] = v\n", "        sample[:, :, 0] = v\n",
     [f"{F}::test_latent_fzs_store_the_encoder_pre_activation_and_raise_it"]),
    ("atlas-latent-fzs-of-another-crosscoder-shown", "atlas.py",
     'stale = fz_config is not None and fz_config.get("crosscoder") != crosscoder_id(RESULTS, b)', "stale = False",
     [f"{CC}::test_data_stage_equals_torchvision_and_hooks"]),
    ("atlas-latent-fz-not-shown", "atlas.py", 'img(fz[f], fz_thumb, f"latent {f} FZ") if f in fz else', 'img(fz[f], fz_thumb, f"latent {f} FZ") if False else',
     [f"{CC}::test_data_stage_equals_torchvision_and_hooks"]),
    ("latent-fzs-of-another-crosscoder-mixed", "fzs.py", "why = config_mismatch(stored, cfg, FZ_KEYS + LATENT_KEYS)",
     "why = config_mismatch(stored, cfg, FZ_KEYS)", [f"{F}::test_latent_fzs_resume_and_refuse_another_crosscoder"]),
    # --- The latency prediction on CORnet-S (latency.py, issue 26)
    ("bypass-ablation-zeroes-the-branch", "latency.py", 'off = [area.nonlin3(first["pre"])] if zeroed',
     'off = [area.nonlin3(first["in"])] if zeroed',
     [f"{LA}::test_responses_equal_hooks_on_the_full_model_intact_and_bypass_zeroed", f"{LA}::test_planted_latency_is_found_and_its_reverse"]),
    ("bypass-ablation-for-every-step", "latency.py", 'off.append(arch.cornet_step(area, off[-1], t)["post"])',
     'off.append(area.nonlin3(arch.cornet_step(area, off[-1], t)["pre"]))', [f"{LA}::test_responses_equal_hooks_on_the_full_model_intact_and_bypass_zeroed"]),
    ("latency-onset-on-the-zoom-axis", "latency.py", '"onset": onset(r).astype(np.float64)', '"onset": onset(np.swapaxes(r, -2, -1)).astype(np.float64)',
     [f"{LA}::test_planted_latency_is_found_and_its_reverse"]),
    ("latency-small-and-large-swapped", "stats.py", "return mean(v[..., zoom < 1]) - mean(v[..., zoom > 1])",
     "return mean(v[..., zoom > 1]) - mean(v[..., zoom < 1])", [f"{LA}::test_planted_latency_is_found_and_its_reverse"]),
    ("latency-zoom-one-counted-small", "stats.py", "return mean(v[..., zoom < 1]) - mean(v[..., zoom > 1])",
     "return mean(v[..., zoom <= 1]) - mean(v[..., zoom > 1])", [f"{LA}::test_shift_is_small_zooms_minus_large_ones_leaving_zoom_one_out"]),
    ("latency-columns-channel-major", "latency.py", "intact = [offset + min(t, T - 1) * C + c for t in range(tmax)]",
     "intact = [offset + c * T + min(t, T - 1) for t in range(tmax)]", [f"{LA}::test_responses_equal_hooks_on_the_full_model_intact_and_bypass_zeroed"]),
    ("latency-control-against-its-own-maximum", "latency.py", "intact = peak[:, :, :1]  #", "intact = peak  #",
     [f"{LA}::test_planted_latency_is_found_and_its_reverse"]),
    ("latency-top-images-of-in", "latency.py", "path = natural_array(RESULTS, ref[a][2])", "path = natural_array(RESULTS, ref[a][0])",
     [f"{CO}::test_fixture_through_ablate_and_tuning"]),
    ("latency-fz-slots-swapped", "latency.py", "for slot, layer in ((k, ref[a][0]), (k + 1, ref[a][1])):",
     "for slot, layer in ((k, ref[a][1]), (k + 1, ref[a][0])):", [f"{CO}::test_fixture_through_ablate_and_tuning"]),
    ("latency-resume-counts-before-the-batch", "latency.py", 'state["done"] = first + n  # the batch is in',
     'state["done"] = first + n + 1  # the batch is in', [f"{LA}::test_an_interrupted_measurement_resumes_to_the_same_values"]),
    ("unablated-top1-as-a-fraction", "ablate.py", "on these {n} images: {100 * top1:.2f}%", "on these {n} images: {top1:.2f}%",
     [f"{CO}::test_fixture_through_ablate_and_tuning"]),
]


def copy_tree(dest):
    """The working tree as git sees it (tracked and untracked-not-ignored files), without results or caches."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True,
                           check=True).stdout.split("\n")
    for rel in filter(None, files):
        if os.path.isfile(os.path.join(ROOT, rel)):
            os.makedirs(os.path.dirname(os.path.join(dest, rel)) or dest, exist_ok=True)
            shutil.copy2(os.path.join(ROOT, rel), os.path.join(dest, rel))


def run_mutant(tree, name, path, old, new, tests, timeout):
    """('killed' | 'SURVIVED' | 'STALE' | 'INVALID', seconds, what caught it)."""
    target = os.path.join(tree, path)
    with open(target) as f:
        original = f.read()
    if original.count(old) != 1:
        return "STALE", 0.0, f"the text to mutate occurs {original.count(old)} times in {path}"
    with open(target, "w") as f:
        f.write(original.replace(old, new))
    t0 = time.time()
    try:
        p = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests], cwd=tree,
                           capture_output=True, text=True, timeout=timeout, env={**os.environ, "OMP_NUM_THREADS": "2"})
        rc, out = p.returncode, p.stdout + p.stderr
    except subprocess.TimeoutExpired:
        rc, out = -1, "timed out"
    finally:
        with open(target, "w") as f:
            f.write(original)
    seconds = time.time() - t0
    failed = [line.split(" ")[1] for line in out.splitlines() if line.startswith("FAILED ")]
    if rc == 1:
        return "killed", seconds, (failed[0].split("::")[-1] if failed else "a test failed")
    if rc == 0:
        return "SURVIVED", seconds, "every selected test passed"
    return "INVALID", seconds, f"pytest exit status {rc}: " + (out.strip().splitlines() or ["no output"])[-1][:120]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default="", help="comma-separated mutant names (default: all)")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--timeout", type=int, default=900, help="seconds per mutant")
    args = parser.parse_args()
    names = [m[0] for m in MUTANTS]
    assert len(set(names)) == len(names), "mutant names must be unique"
    chosen = [m for m in MUTANTS if not args.only or m[0] in args.only.split(",")]
    unknown = set(filter(None, args.only.split(","))) - set(names)
    if unknown:
        raise SystemExit(f"error: unknown mutant(s) {', '.join(sorted(unknown))}; see --list")
    if args.list:
        for name, path, old, new, tests in chosen:
            print(f"{name:32s} {path:14s} {old.strip()[:60]!r} -> {new.strip()[:60]!r}")
        return
    t0 = time.time()
    survivors = []
    with tempfile.TemporaryDirectory(prefix="mutants-") as tree:
        copy_tree(tree)
        print(f"{len(chosen)} mutants, each run against its tests in a copy of the tree ({tree})")
        for k, (name, path, old, new, tests) in enumerate(chosen, 1):
            status, seconds, why = run_mutant(tree, name, path, old, new, tests, args.timeout)
            print(f"[{k:2d}/{len(chosen)}] {status:8s} {name:32s} {seconds:6.1f} s  {why}", flush=True)
            if status != "killed":
                survivors.append(name)
    print(f"\n{len(chosen) - len(survivors)} of {len(chosen)} mutants killed in {time.time() - t0:.0f} s"
          + (f"; not killed: {', '.join(survivors)}" if survivors else ""))
    sys.exit(1 if survivors else 0)


if __name__ == "__main__":
    main()
