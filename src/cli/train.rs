//! `shadertrain train`: the epoch loop, with checkpoints, resuming, the progress bar and the
//! metrics log around the library's `Trainer`.

use std::cell::{Cell, RefCell};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use shadertrain::checkpoint::{self, Checkpoint, FolderLock, RunDescription, RunOutputs};
use shadertrain::data::DataIdentity;
use shadertrain::failpoint;
use shadertrain::files::{self, AppendLog};
use shadertrain::gpu::{Gpu, Kernels};
use shadertrain::model_file::name_of;
use shadertrain::model_file::{load_parameters_for, save_model};
use shadertrain::train::{EpochMetrics, EpochProgress, LrSchedule, TrainConfig, Trainer};
use shadertrain::{Error, Result};

use crate::cli::recipe::{Recipe, recipe};
use crate::cli::signals::{Interrupt, Received, say_what_is_kept};
use crate::{ImageSize, TrainArgs};

/// Where and how often checkpoints are written.
struct CheckpointPlan {
    dir: PathBuf,
    every: Option<u64>,
    keep: usize,
    /// Whether the folder holds a checkpoint of this run (resumed from, or written).
    holds_one: Cell<bool>,
}

/// `given(id)` tells whether the flag with that clap id was on the command line: on resume,
/// flags not given take the checkpoint's values.
pub fn run(mut args: TrainArgs, given: &dyn Fn(&str) -> bool) -> Result<()> {
    check_flag_combinations(&args, given)?;
    // Lock an existing folder before reading it: another run's checkpoints are neither read
    // nor written while it runs. A folder still to be created is locked when it is.
    let folder = args.checkpoint_dir.as_ref().or(args.resume.as_ref());
    let lock = match folder {
        Some(dir) if dir.is_dir() => Some(checkpoint::lock(dir)?),
        _ => None,
    };
    let resumed = match &args.resume {
        Some(dir) => resume_point(dir)?,
        None => None,
    };
    if let Some((path, saved)) = &resumed {
        take_unset_flags_from(&mut args, path, saved, given)?;
    }
    check_outputs(&args)?;
    let plan = checkpoint_plan(&args, resumed.as_ref().map(|(_, c)| c), given)?;
    let claimed = if given("dataset") {
        Some((args.recipe.dataset, "--dataset"))
    } else {
        (resumed.as_ref()).map(|(_, saved)| (saved.run.data.labels, "the checkpoint"))
    };
    let Recipe {
        data_dir,
        data,
        train_set,
        test_set,
        spec,
        config,
        notes,
    } = recipe(&args.recipe, args.epochs, claimed)?;
    let run = RunDescription {
        data: data.clone(),
        spec: spec.clone(),
        config: config.clone(),
        train_samples: train_set.samples(),
        test_samples: test_set.samples(),
    };
    if let Some((path, saved)) = &resumed {
        let contradictions = saved.run.contradictions(&run);
        if !contradictions.is_empty() {
            return Err(contradicting(path, &contradictions));
        }
    }
    if let Some((path, saved)) = &resumed {
        refuse_a_target_behind(path, saved, &config)?;
    }
    // Checked before any work, like the output paths.
    let init = match &args.init {
        Some(path) => {
            let weights = load_parameters_for(path, &spec)
                .map_err(|e| Error::Config(format!("--init: {e}")))?;
            Some((path, weights))
        }
        None => None,
    };
    // The BatchNorms' batch count goes on from the file the run started from.
    let batches_tracked_before = match (&resumed, &init) {
        (Some((_, saved)), _) => saved.run.config.batches_tracked_before,
        (None, Some((_, weights))) => weights.batches_tracked,
        (None, None) => 0,
    };
    let config = TrainConfig {
        batches_tracked_before,
        ..config
    };
    let run = RunDescription {
        config: config.clone(),
        ..run
    };

    // Opened before the device, the last check: a named pipe without a reader is refused here.
    let log = args
        .metrics
        .as_deref()
        .map(|path| MetricsLog::continue_from(path, resumed.as_ref().map(|(_, c)| c)))
        .transpose()?;
    let gpu = Gpu::open(&args.recipe.adapter.request())?;
    let kernels = Kernels::new(&gpu);
    outln!("adapter: {}", gpu.adapter_name());
    outln!(
        "data: {} from {} ({} training, {} test samples; classes {})",
        data.name(),
        data_dir.display(),
        train_set.samples(),
        test_set.samples(),
        data.class_names().join(", ")
    );
    for note in &notes {
        outln!("{note}");
    }
    if let Some(validation) = validation_samples(train_set.samples(), config.validation_split) {
        let held_out = match validation {
            1 => "the last training sample".to_string(),
            n => format!("the last {n} training samples"),
        };
        outln!(
            "validation: {held_out} (--validation-split {})",
            config.validation_split
        );
    }
    outln!(
        "model: {} on {}{} ({} parameters), loss {}{}, optimizer {}, batch {}, seed {}",
        spec.describe(),
        spec.input,
        (spec.standardisation.as_ref()).map_or(String::new(), |s| format!(
            " standardised ({})",
            s.describe()
        )),
        spec.layout().parameter_count(),
        name_of(&spec.loss),
        match config.label_smoothing {
            0.0 => String::new(),
            s => format!(" (label smoothing {s})"),
        },
        describe_optimizer(&config),
        config.batch_size,
        config.seed
    );
    if !config.augmentation.is_none() {
        outln!(
            "augmentation: {} (training images only, drawn per seed, step and sample)",
            config.augmentation.describe()
        );
    }
    let epochs = config.epochs;
    let columns = Columns {
        validation: config.validation_split > 0.0,
        learning_rate: config.lr_schedule != LrSchedule::Constant || config.warmup_epochs.is_some(),
    };
    let mut trainer = Trainer::new(&gpu, &kernels, spec, config, &train_set, &test_set)?;
    // The data lives on the GPU now.
    drop((train_set, test_set));
    if let Some((path, weights)) = init {
        trainer.set_parameters(&weights.params)?;
        outln!("initialised from {}", path.display());
    }
    if let Some((path, saved)) = &resumed {
        trainer.restore(&saved.state)?;
        outln!("{}", resume_summary(path, saved, &trainer));
        if saved.adapter != gpu.adapter_name() {
            outln!(
                "note: the checkpoint was trained on {}; continuing on another adapter can differ \
                 from the uninterrupted run in the last bits",
                saved.adapter
            );
        }
    }
    let _lock = match &plan {
        Some(plan) => Some(plan.prepare(lock)?),
        None => None,
    };
    if let Some(plan) = &plan {
        outln!(
            "checkpoints: {} (at each epoch end{}; the newest {} kept)",
            plan.dir.display(),
            plan.every
                .map(|n| format!(" and every {n} steps"))
                .unwrap_or_default(),
            plan.keep
        );
    }

    // A run stopped during its last evaluation, all its steps taken, still owes that row.
    let mut row_owed = trainer.finished()
        && trainer.epoch_position().is_some()
        && (resumed.as_ref()).is_some_and(|(_, saved)| saved.last_epoch.is_none());
    if (trainer.epochs_done() >= epochs || trainer.finished()) && !row_owed {
        let reached = match trainer.epoch_position() {
            Some(_) => format!(
                "has reached --max-steps {} (in epoch {})",
                trainer.steps_done(),
                trainer.epochs_done() + 1
            ),
            None => format!(
                "had finished ({} epochs, {} steps)",
                trainer.epochs_done(),
                trainer.steps_done()
            ),
        };
        outln!("nothing left to train: the run {reached}");
    } else {
        print_header(columns);
    }
    let outputs = RunOutputs {
        save: args.save.as_deref().map(absolute),
        metrics: args.metrics.as_deref().map(absolute),
        metrics_every: args.metrics_every,
        data: Some(absolute(&data_dir)),
        keep_checkpoints: plan.as_ref().map(|p| p.keep),
        metrics_lines: None,
    };
    // At an epoch's end the checkpoint comes first, then the epoch's line in the log.
    let checkpoint_of = |trainer: &Trainer, last_epoch: Option<String>| -> Result<Checkpoint> {
        let follows = usize::from(last_epoch.is_some());
        Ok(Checkpoint {
            run: run.clone(),
            outputs: RunOutputs {
                metrics_lines: log
                    .as_ref()
                    .and_then(MetricsLog::lines)
                    .map(|lines| lines + follows),
                ..outputs.clone()
            },
            adapter: gpu.adapter_name(),
            checkpoint_every: plan.as_ref().and_then(|p| p.every),
            state: trainer.state()?,
            last_epoch,
        })
    };
    say_what_is_kept(match &plan {
        Some(plan) => plan.kept_line(),
        None => "nothing of the run is kept (it has no --checkpoint-dir)".into(),
    });
    let interrupt = Interrupt::register()?;
    trainer.stop_when(interrupt.requested());
    let mut stopped_by = None;
    while trainer.epochs_done() < epochs && (!trainer.finished() || row_owed) {
        row_owed = false;
        if let Some(signal) = interrupt.received() {
            stopped_by = Some(signal);
            break;
        }
        let Some(m) = train_one_epoch(
            &mut trainer,
            &args,
            &data,
            log.as_ref(),
            plan.as_ref(),
            &checkpoint_of,
        )?
        else {
            stopped_by = interrupt.received();
            break;
        };
        failpoint::reach(failpoint::EPOCH_END);
        let record = epoch_record(&data, &m);
        let losses = [("training loss", m.train_loss), ("test loss", m.test_loss)];
        let validation = m.validation.map(|v| ("validation loss", v.loss));
        if let Some((what, value)) = losses
            .into_iter()
            .chain(validation)
            .find(|(_, v)| !v.is_finite())
        {
            // The log keeps the epoch (as text where not finite); nothing else is written.
            if let Some(log) = &log {
                log.append(&record)?;
            }
            print_epoch(&m, columns);
            return Err(Error::Diverged {
                epoch: m.epoch,
                what,
                value,
                learning_rate: trainer.config().learning_rate,
            });
        }
        if let Some(plan) = &plan {
            let checkpoint = checkpoint_of(&trainer, Some(without_clock(&record)))?;
            plan.save(&checkpoint)?;
        }
        if let Some(log) = &log {
            log.append(&record)?;
        }
        print_epoch(&m, columns);
        if m.partial() {
            outln!(
                "* epoch {} is partial: --max-steps {} stopped it after {} of its {} steps (its \
                 training figures cover those); resuming with a higher --max-steps goes on with it",
                m.epoch,
                trainer.steps_done(),
                m.steps_taken,
                m.steps
            );
        }
    }
    // A signal during the last epoch's checkpoint or log line stops the run too: what it
    // says it kept is then the whole run.
    let complete = stopped_by.is_none();
    if let Some(signal) = stopped_by.or_else(|| interrupt.received()) {
        let save = args.save.as_deref().map(|path| (path, &data));
        return Err(stop(
            &trainer,
            signal,
            complete,
            save,
            plan.as_ref(),
            &|t| checkpoint_of(t, None),
        ));
    }
    if let Some(path) = &args.save {
        let params = trainer.parameters()?;
        save_model(
            path,
            trainer.spec(),
            &params,
            &data,
            trainer.batches_tracked(),
        )?;
        outln!("saved the model to {}", path.display());
    }
    Ok(())
}

/// After a stop signal: saves the model so far (with --save) and a checkpoint of the step
/// reached (with a checkpoint folder, unless the newest is of that step), and returns the error
/// that says how to go on (`complete`: the signal came after the last epoch's row).
fn stop(
    trainer: &Trainer,
    signal: Received,
    complete: bool,
    save: Option<(&Path, &DataIdentity)>,
    plan: Option<&CheckpointPlan>,
    checkpoint_of: &dyn Fn(&Trainer) -> Result<Checkpoint>,
) -> Error {
    let steps_done = trainer.steps_done();
    let stopped = |then: String| Error::Interrupted {
        signal: signal.name,
        exit_code: signal.exit_code,
        steps_done,
        then,
    };
    if steps_done == 0 {
        return stopped("nothing was trained yet, nothing saved".into());
    }
    let saved = || -> Result<String> {
        let mut kept = Vec::new();
        if let Some((path, data)) = save {
            let params = trainer.parameters()?;
            save_model(
                path,
                trainer.spec(),
                &params,
                data,
                trainer.batches_tracked(),
            )?;
            let so_far = if complete { "" } else { " so far" };
            kept.push(format!("the model{so_far} in {}", path.display()));
        }
        if complete {
            kept.push("the run had finished training".into());
        }
        let Some(plan) = plan else {
            if complete {
                return Ok(kept.join("; "));
            }
            kept.push(
                "no --checkpoint-dir, so the run cannot be resumed (give one to make a run \
                 resumable)"
                    .into(),
            );
            return Ok(kept.join("; "));
        };
        let newest = checkpoint::list(&plan.dir)?.last().map(|(steps, _)| *steps);
        if newest != Some(steps_done) {
            plan.save(&checkpoint_of(trainer)?)?;
        }
        if !complete {
            kept.push(format!(
                "continue with: shadertrain train --resume {}",
                absolute(&plan.dir).display()
            ));
        }
        Ok(kept.join("; "))
    };
    match saved() {
        Ok(then) => stopped(then),
        Err(e) => e,
    }
}

/// Takes the rest of the epoch under way (or a new one) and ends it: the progress bar, the
/// --metrics-every lines and the checkpoints inside the epoch (its end-of-epoch checkpoint is the
/// caller's). None when a stop signal came first: the steps taken are whole, the epoch not.
fn train_one_epoch(
    trainer: &mut Trainer,
    args: &TrainArgs,
    data: &DataIdentity,
    log: Option<&MetricsLog>,
    plan: Option<&CheckpointPlan>,
    checkpoint_of: &dyn Fn(&Trainer, Option<String>) -> Result<Checkpoint>,
) -> Result<Option<EpochMetrics>> {
    if trainer.epoch_position().is_none() {
        trainer.start_epoch()?;
    }
    let bar = progress_bar(trainer);
    let bar_start = (
        Instant::now(),
        trainer.epoch_position().map_or(0, |(taken, _)| taken),
    );
    let latest = Cell::new(None);
    let mut observe = |p: EpochProgress| {
        latest.set(Some(p));
        if let Some(bar) = &bar {
            let rate = (p.steps_done - bar_start.1) as f64 / bar_start.0.elapsed().as_secs_f64();
            bar.set_position(p.steps_done as u64);
            bar.set_message(format!("{rate:.1} steps/s  loss {:.4}", p.running_loss));
        }
    };
    let observed = bar.is_some() || args.metrics_every.is_some();
    let checkpoint_every = plan.and_then(|p| p.every);
    while let Some((taken, total)) = trainer.epoch_position()
        && taken < total
        && !trainer.finished()
    {
        // Stop at the next step that is a multiple of either interval.
        let steps_to = |every: Option<u64>| {
            every.map_or(usize::MAX, |n| (n - trainer.steps_done() % n) as usize)
        };
        let count = steps_to(checkpoint_every).min(steps_to(args.metrics_every));
        trainer.train(
            count,
            observed.then_some(&mut observe as &mut dyn FnMut(EpochProgress)),
        )?;
        // Seen early where progress is read anyway: stop before checkpointing a diverged run.
        if let Some(progress) = latest.get()
            && !progress.running_loss.is_finite()
        {
            return Err(Error::Diverged {
                epoch: trainer.epochs_done() + 1,
                what: "running training loss",
                value: progress.running_loss,
                learning_rate: trainer.config().learning_rate,
            });
        }
        let at = |every: Option<u64>| every.is_some_and(|n| trainer.steps_done() % n == 0);
        if let (Some(log), Some(progress)) = (log, latest.get())
            && at(args.metrics_every)
        {
            log.append(&interval_record(data, trainer.steps_done(), &progress))?;
        }
        // An epoch's last step is followed by its end-of-epoch checkpoint instead.
        if let (Some(plan), Some((taken, total))) = (plan, trainer.epoch_position())
            && at(checkpoint_every)
            && taken < total
        {
            plan.save(&checkpoint_of(trainer, None)?)?;
        }
        if trainer.stop_requested() {
            break;
        }
    }
    let m = match trainer.epoch_position() {
        _ if trainer.stop_requested() => Err(Error::Stopped),
        // --max-steps came first: the figures so far, the epoch left under way.
        Some((taken, total)) if taken < total => trainer.epoch_so_far(),
        _ => trainer.end_epoch(),
    };
    // A stop during the evaluation leaves the epoch under way, its steps all taken.
    let m = match m {
        Err(Error::Stopped) => None,
        other => Some(other?),
    };
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    Ok(m)
}

/// Flags that only make sense with another, or not with another.
fn check_flag_combinations(args: &TrainArgs, given: &dyn Fn(&str) -> bool) -> Result<()> {
    if let (Some(dir), Some(resume)) = (&args.checkpoint_dir, &args.resume)
        && !same_folder(dir, resume)
    {
        return Err(Error::Config(format!(
            "--checkpoint-dir {} and --resume {} name different folders: a resumed run goes on \
             writing into the folder it resumes from (leave --checkpoint-dir out)",
            dir.display(),
            resume.display()
        )));
    }
    let no_folder = args.checkpoint_dir.is_none() && args.resume.is_none();
    for (id, flag) in [
        ("checkpoint_every", "--checkpoint-every"),
        ("keep_checkpoints", "--keep-checkpoints"),
    ] {
        if no_folder && given(id) {
            return Err(Error::Config(format!(
                "{flag} needs --checkpoint-dir (or --resume) to say where the checkpoints go"
            )));
        }
    }
    Ok(())
}

/// Fail before training, not after, when an output cannot be written. Runs after a resumed
/// run's flags are restored.
fn check_outputs(args: &TrainArgs) -> Result<()> {
    if args.metrics_every.is_some() && args.metrics.is_none() {
        return Err(Error::Config(
            "--metrics-every needs --metrics to say where to write".into(),
        ));
    }
    let unwritable = |flag, path: &Path, problem| Error::Unwritable {
        flag,
        path: path.to_path_buf(),
        problem,
    };
    let checkpoints = args.checkpoint_dir.as_ref().or(args.resume.as_ref());
    for (flag, dir) in [
        ("--checkpoint-dir", &args.checkpoint_dir),
        ("--resume", &args.resume),
    ] {
        if let Some(dir) = dir {
            files::check_folder_writable(dir).map_err(|p| unwritable(flag, dir, p))?;
        }
    }
    for (flag, path) in [("--save", &args.save), ("--metrics", &args.metrics)] {
        let Some(path) = path else { continue };
        // Where the file really is, through links.
        let target = files::follow_links(path).unwrap_or_else(|_| path.clone());
        let folder = files::folder_of(&target);
        let ours = checkpoints.is_some_and(|dir| same_folder(dir, folder));
        if ours && checkpoint::is_managed_name(&target) {
            return Err(unwritable(
                flag,
                path,
                "the checkpoint folder keeps its own files under that name; give another".into(),
            ));
        }
        if !ours && let Some(holder) = checkpoint::lock_holder(folder) {
            return Err(unwritable(
                flag,
                path,
                format!(
                    "{} is the checkpoint folder of a run in progress ({holder}); write \
                     elsewhere",
                    folder.display()
                ),
            ));
        }
        // In the checkpoint folder still to be made, the folder's own check stands for it.
        if ours && !folder.is_dir() {
            continue;
        }
        match flag {
            "--save" => files::check_file_writable(path),
            _ => files::check_log_writable(path),
        }
        .map_err(|p| unwritable(flag, path, p))?;
    }
    if let (Some(save), Some(metrics)) = (&args.save, &args.metrics)
        && files::same_file(save, metrics)
    {
        return Err(unwritable(
            "--save",
            save,
            format!(
                "--metrics {} names the same file; give each output its own",
                metrics.display()
            ),
        ));
    }
    Ok(())
}

/// The checkpoint `--resume DIR` continues from: the newest that reads back whole (newer
/// damaged ones are set aside, with a warning); None, said in one line, when DIR has none yet.
fn resume_point(dir: &Path) -> Result<Option<(PathBuf, Checkpoint)>> {
    let (found, set_aside) = match dir.is_dir() {
        true => checkpoint::newest_intact(dir)?,
        false => (None, Vec::new()),
    };
    for damaged in &set_aside {
        errln!(
            "warning: {} is damaged ({}); moved it aside to {}",
            damaged.path.display(),
            damaged.problem,
            damaged.moved_to.display()
        );
    }
    match &found {
        Some((path, _)) if !set_aside.is_empty() => {
            errln!("warning: resuming from the older {}", path.display())
        }
        Some(_) => {}
        None => outln!(
            "no checkpoint in {} yet: starting the run from the beginning",
            dir.display()
        ),
    }
    Ok(found)
}

/// The error for flags on resume that contradict the checkpoint at `path`, one line each.
fn contradicting(path: &Path, contradictions: &[String]) -> Error {
    Error::Config(format!(
        "--resume: this run contradicts the checkpoint {}:\n  {}\n(leave those flags out to \
         continue with the checkpoint's values)",
        path.display(),
        contradictions.join("\n  ")
    ))
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// One rule for --epochs and --max-steps on resume: a target the checkpoint has passed is refused
/// (the run cannot go back); a target it has just reached trains nothing.
fn refuse_a_target_behind(path: &Path, saved: &Checkpoint, config: &TrainConfig) -> Result<()> {
    let state = &saved.state;
    let in_epoch = state.epoch.is_some();
    let epochs_passed =
        state.epochs_done > config.epochs || (in_epoch && state.epochs_done == config.epochs);
    let steps_passed = config.max_steps.filter(|&max| state.steps_done > max);
    let position = match in_epoch {
        true => format!("in epoch {}", state.epochs_done + 1),
        false => format!("after epoch {}", state.epochs_done),
    };
    let passed = match (epochs_passed, steps_passed) {
        (true, _) => format!("--epochs {}", config.epochs),
        (false, Some(max)) => format!("--max-steps {max}"),
        (false, None) => return Ok(()),
    };
    Err(Error::Config(format!(
        "--resume: the checkpoint {} is {position} ({} steps done), past {passed}; give a target \
         at or beyond the checkpoint, or leave the flag out",
        path.display(),
        state.steps_done
    )))
}

/// Fills every training flag not given on the command line with the checkpoint's value; an
/// output given that the checkpoint names otherwise is refused (a run's log and model stay in
/// one place). `--data` may move: the data's identity is checked by content.
fn take_unset_flags_from(
    args: &mut TrainArgs,
    path: &Path,
    saved: &Checkpoint,
    given: &dyn Fn(&str) -> bool,
) -> Result<()> {
    let run = &saved.run;
    let c = &run.config;
    let unset = |id: &str| !given(id);
    let outputs = &saved.outputs;
    let mut contradictions = Vec::new();
    for (id, flag, asked, original) in [
        ("save", "--save", &mut args.save, &outputs.save),
        ("metrics", "--metrics", &mut args.metrics, &outputs.metrics),
    ] {
        match (unset(id), original) {
            (true, Some(original)) => *asked = Some(original.clone()),
            (false, Some(original))
                if asked.as_deref().map(absolute).as_ref() != Some(original) =>
            {
                contradictions.push(format!(
                    "{flag}: the run writes {}, this run asks for {}",
                    original.display(),
                    asked.as_deref().unwrap_or(Path::new("")).display()
                ))
            }
            _ => {}
        }
    }
    match (unset("metrics_every"), outputs.metrics_every) {
        (true, Some(every)) => args.metrics_every = Some(every),
        (false, Some(every)) if args.metrics_every != Some(every) => contradictions.push(format!(
            "--metrics-every: the run logs every {every} steps, this run asks for {}",
            args.metrics_every.unwrap_or_default()
        )),
        _ => {}
    }
    match (unset("keep_checkpoints"), outputs.keep_checkpoints) {
        (true, Some(keep)) => args.keep_checkpoints = keep,
        (false, Some(keep)) if args.keep_checkpoints != keep => contradictions.push(format!(
            "--keep-checkpoints: the run keeps {keep}, this run asks for {}",
            args.keep_checkpoints
        )),
        _ => {}
    }
    if !contradictions.is_empty() {
        return Err(contradicting(path, &contradictions));
    }
    if let Some(data) = &outputs.data
        && unset("data")
        && data.is_dir()
    {
        args.recipe.data.data = Some(data.clone());
    }
    if unset("dataset") {
        args.recipe.dataset = run.data.labels;
    }
    // An image folder is decoded to the checkpoint's input shape.
    if run.data.labels == shadertrain::data::DatasetKind::Folder {
        let input = run.spec.input;
        if unset("image_size") {
            args.recipe.image_size = Some(ImageSize(input.height as u32, input.width as u32));
        }
        if unset("channels") {
            args.recipe.channels = Some(input.channels);
        }
    }
    // The checkpoint's model, unless one is given (which must then be the same).
    if ["model", "layers", "hidden", "activation"]
        .iter()
        .all(|id| unset(id))
    {
        args.recipe.layers = Some(run.spec.describe());
    }
    if unset("loss") {
        args.recipe.loss = run.spec.loss;
    }
    if unset("optimizer") {
        args.recipe.optimizer = Some(c.optimizer);
    }
    if unset("momentum") {
        args.recipe.momentum = Some(c.momentum);
    }
    if unset("nesterov") {
        args.recipe.nesterov = Some(c.nesterov);
    }
    if unset("weight_decay") {
        args.recipe.weight_decay = Some(c.weight_decay);
    }
    if unset("lr_schedule") {
        args.recipe.lr_schedule = Some(c.lr_schedule);
    }
    if unset("warmup_epochs") {
        args.recipe.warmup_epochs = c.warmup_epochs;
    }
    if unset("label_smoothing") {
        args.recipe.label_smoothing = Some(c.label_smoothing);
    }
    if unset("normalize") {
        args.recipe.normalize = Some(run.spec.standardisation.is_some());
    }
    if unset("augment") {
        args.recipe.augment = Some(c.augmentation);
    }
    if unset("lr") {
        args.recipe.lr = Some(c.learning_rate);
    }
    if unset("batch_size") {
        args.recipe.batch_size = c.batch_size;
    }
    if unset("seed") {
        args.recipe.seed = c.seed;
    }
    if unset("no_shuffle") {
        args.recipe.no_shuffle = !c.shuffle;
    }
    if unset("epochs") {
        args.epochs = Some(c.epochs);
    }
    if unset("validation_split") {
        // A folder without test/ took its test set with the flag's fraction.
        args.recipe.validation_split = Some(match c.test_split > 0.0 {
            true => c.test_split,
            false => c.validation_split,
        });
    }
    if unset("max_steps") {
        args.recipe.max_steps = c.max_steps;
    }
    Ok(())
}

/// Where checkpoints go: --checkpoint-dir, else the folder resumed from. Refuses to mix a run
/// into a folder holding another run's checkpoints.
fn checkpoint_plan(
    args: &TrainArgs,
    resumed: Option<&Checkpoint>,
    given: &dyn Fn(&str) -> bool,
) -> Result<Option<CheckpointPlan>> {
    let every = if given("checkpoint_every") {
        args.checkpoint_every
    } else {
        args.checkpoint_every
            .or(resumed.and_then(|c| c.checkpoint_every))
    };
    let Some(dir) = args.checkpoint_dir.clone().or(args.resume.clone()) else {
        return Ok(None);
    };
    let resuming_here = args.resume.as_deref().is_some_and(|r| same_folder(r, &dir));
    if dir.is_dir()
        && !resuming_here
        && let Some(existing) = checkpoint::newest(&dir)?
    {
        return Err(Error::Config(format!(
            "--checkpoint-dir {}: it already holds checkpoints of a run (newest {}); continue that \
             run with --resume {}, or give an empty folder",
            dir.display(),
            existing.display(),
            dir.display()
        )));
    }
    if args.keep_checkpoints == 0 {
        return Err(Error::Config(
            "--keep-checkpoints must be at least 1".into(),
        ));
    }
    Ok(Some(CheckpointPlan {
        dir,
        every,
        keep: args.keep_checkpoints,
        holds_one: Cell::new(resuming_here && resumed.is_some()),
    }))
}

/// Whether two paths name one folder: resolved where they exist, else compared as absolute
/// paths (so that `./runs/a` and `runs/a` are one folder before it is made).
fn same_folder(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => absolute(a) == absolute(b),
    }
}

impl CheckpointPlan {
    /// Writes `checkpoint`; from the first on, a second stop signal says where it is.
    fn save(&self, checkpoint: &Checkpoint) -> Result<()> {
        checkpoint::save(&self.dir, checkpoint, self.keep)?;
        if !self.holds_one.replace(true) {
            say_what_is_kept(self.kept_line());
        }
        Ok(())
    }

    /// What a second stop signal says is kept.
    fn kept_line(&self) -> String {
        let dir = absolute(&self.dir);
        match self.holds_one.get() {
            true => format!(
                "the newest checkpoint is kept: continue with shadertrain train --resume {}",
                dir.display()
            ),
            false => format!("no checkpoint was written in {} yet", dir.display()),
        }
    }

    /// Creates the folder, locks it (unless `lock` already holds it) and removes what killed
    /// writes left there: just before training, so that a run refused earlier leaves nothing
    /// behind.
    fn prepare(&self, lock: Option<FolderLock>) -> Result<FolderLock> {
        std::fs::create_dir_all(&self.dir).map_err(|e| Error::io(&self.dir, e))?;
        let lock = match lock {
            Some(lock) => lock,
            None => checkpoint::lock(&self.dir)?,
        };
        checkpoint::remove_temporary_files(&self.dir)?;
        Ok(lock)
    }
}

fn resume_summary(path: &Path, saved: &Checkpoint, trainer: &Trainer) -> String {
    let state = &saved.state;
    let position = match trainer.epoch_position() {
        Some((taken, total)) => format!(
            "in epoch {}, step {taken} of {total}",
            state.epochs_done + 1
        ),
        None => format!("after epoch {}", state.epochs_done),
    };
    format!(
        "resumed from {} ({position}; {} steps done)",
        path.display(),
        state.steps_done
    )
}

/// A bar for the epoch under way when stderr is a terminal; None otherwise (logs get one line
/// per epoch, on stdout).
fn progress_bar(trainer: &Trainer) -> Option<ProgressBar> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let (taken, total) = trainer.epoch_position()?;
    let bar = ProgressBar::with_draw_target(Some(total as u64), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template("epoch {prefix} [{bar:20}] {pos}/{len}  {msg}  ETA {eta}")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    bar.set_prefix((trainer.epochs_done() + 1).to_string());
    bar.set_position(taken as u64);
    Some(bar)
}

/// Samples `--validation-split` holds out of `samples`, if any (as `Dataset::split_validation`).
fn validation_samples(samples: usize, fraction: f64) -> Option<usize> {
    let kept = (samples as f64 * (1.0 - fraction)).floor() as usize;
    (fraction > 0.0).then_some(samples - kept)
}

/// The optimizer and its learning rate as the run header shows them, e.g. "sgd (lr 0.1,
/// Nesterov momentum 0.9, weight decay 0.0005; cosine schedule, 1 warm-up epoch)".
fn describe_optimizer(c: &TrainConfig) -> String {
    let mut terms = vec![format!("lr {}", c.learning_rate)];
    if c.momentum > 0.0 {
        let nesterov = if c.nesterov { "Nesterov " } else { "" };
        terms.push(format!("{nesterov}momentum {}", c.momentum));
    }
    if c.weight_decay > 0.0 {
        terms.push(format!("weight decay {}", c.weight_decay));
    }
    let mut schedule = Vec::new();
    if c.lr_schedule != LrSchedule::Constant {
        schedule.push(format!("{} schedule", name_of(&c.lr_schedule)));
    }
    if let Some(warmup) = c.warmup_epochs {
        let plural = if warmup == 1.0 { "" } else { "s" };
        schedule.push(format!("{warmup} warm-up epoch{plural}"));
    }
    let schedule = match schedule.is_empty() {
        true => String::new(),
        false => format!("; {}", schedule.join(", ")),
    };
    format!("{} ({}{schedule})", name_of(&c.optimizer), terms.join(", "))
}

/// The epoch table's optional columns.
#[derive(Clone, Copy)]
struct Columns {
    /// val_loss and val_acc, with --validation-split.
    validation: bool,
    /// The learning rate of the epoch's last step, where it changes during the run.
    learning_rate: bool,
}

fn print_header(columns: Columns) {
    let validation = match columns.validation {
        true => format!(" {:>10} {:>9}", "val_loss", "val_acc"),
        false => String::new(),
    };
    let learning_rate = match columns.learning_rate {
        true => format!(" {:>10}", "lr"),
        false => String::new(),
    };
    outln!(
        "{:>5} {:>10} {:>9}{validation} {:>10} {:>9}{learning_rate} {:>8} {:>10}",
        "epoch",
        "train_loss",
        "train_acc",
        "test_loss",
        "test_acc",
        "seconds",
        "samples/s"
    );
}

/// A loss in the table's 10 columns: fixed point while it fits, else scientific.
fn loss_column(loss: f64) -> String {
    match loss.abs() < 1e5 || !loss.is_finite() {
        true => format!("{loss:>10.4}"),
        false => format!("{loss:>10.3e}"),
    }
}

fn print_epoch(m: &EpochMetrics, columns: Columns) {
    let validation = match m.validation {
        Some(v) => format!(" {} {:>8.2}%", loss_column(v.loss), 100.0 * v.accuracy),
        None => String::new(),
    };
    let learning_rate = match columns.learning_rate {
        true => format!(" {:>10.4e}", m.learning_rate),
        false => String::new(),
    };
    let epoch = match m.partial() {
        true => format!("{}*", m.epoch),
        false => m.epoch.to_string(),
    };
    outln!(
        "{epoch:>5} {} {:>8.2}%{validation} {} {:>8.2}%{learning_rate} {:>8.2} {:>10.0}",
        loss_column(m.train_loss),
        100.0 * m.train_accuracy,
        loss_column(m.test_loss),
        100.0 * m.test_accuracy,
        m.seconds,
        m.samples_per_second
    );
}

/// A figure for the metrics log: a number, or "NaN" / "inf" / "-inf" as text (JSON has no
/// such numbers, and serde_json would write null).
fn figure(value: f64) -> serde_json::Value {
    match value.is_finite() {
        true => value.into(),
        false => format!("{value}").into(),
    }
}

/// The epoch's line in the --metrics log: every printed figure and a timestamp.
fn epoch_record(data: &DataIdentity, m: &EpochMetrics) -> String {
    let mut record = serde_json::json!({
        "kind": "epoch",
        "timestamp_unix_s": unix_time(),
        "dataset": data.name(),
        "epoch": m.epoch,
        "train_samples": m.train_samples,
        "train_loss": figure(m.train_loss),
        "train_accuracy": m.train_accuracy,
        "test_loss": figure(m.test_loss),
        "test_accuracy": m.test_accuracy,
        // The f32's shortest decimal, not its f64 expansion.
        "learning_rate": figure(m.learning_rate.to_string().parse().unwrap_or(f64::NAN)),
        "seconds": m.seconds,
        "samples_per_second": m.samples_per_second,
    });
    if let Some(v) = m.validation {
        record["val_loss"] = figure(v.loss);
        record["val_accuracy"] = v.accuracy.into();
    }
    if m.partial() {
        record["partial"] = true.into();
        record["epoch_step"] = m.steps_taken.into();
        record["epoch_steps"] = m.steps.into();
    }
    record.to_string()
}

/// A metrics record without the clock's figures: what a checkpoint keeps, so that identical
/// runs write identical checkpoints.
fn without_clock(record: &str) -> String {
    let mut value: serde_json::Value = serde_json::from_str(record).expect("our own JSON");
    if let Some(fields) = value.as_object_mut() {
        for clock in ["timestamp_unix_s", "seconds", "samples_per_second"] {
            fields.remove(clock);
        }
    }
    value.to_string()
}

/// Seconds since 1970, for the metrics log.
fn unix_time() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default()
}

/// A --metrics-every line: the running training metrics of the epoch under way.
fn interval_record(data: &DataIdentity, steps_done: u64, p: &EpochProgress) -> String {
    serde_json::json!({
        "kind": "interval",
        "timestamp_unix_s": unix_time(),
        "dataset": data.name(),
        "epoch": p.epoch,
        "step": steps_done,
        "epoch_step": p.steps_done,
        "epoch_steps": p.steps,
        "running_train_loss": figure(p.running_loss),
        "running_train_accuracy": p.running_accuracy,
    })
    .to_string()
}

/// The `--metrics` log: a checkpoint records how many lines it held, so that a resumed run
/// continues it as the uninterrupted run would have written it. A stream (a terminal, a pipe)
/// that fails is given up with a warning; the run goes on.
struct MetricsLog {
    log: RefCell<Option<AppendLog>>,
}

impl MetricsLog {
    /// On resume, lines written after the checkpoint (by the run that was killed, and written
    /// again now) are dropped, and an epoch's line the killed run did not get to write is
    /// written from the checkpoint. A stream is only ever written to.
    fn continue_from(path: &Path, resumed: Option<&Checkpoint>) -> Result<Self> {
        let mut log = AppendLog::open(path).map_err(|e| match e {
            Error::MetricsLog { path, problem } => Error::Unwritable {
                flag: "--metrics",
                path,
                problem,
            },
            other => other,
        })?;
        if resumed.is_some() {
            log.drop_torn_last_line()?;
        }
        if let (Some(saved), Some(lines)) = (resumed, log.lines()) {
            match (saved.outputs.metrics_lines, &saved.last_epoch) {
                (Some(stood), _) if lines > stood => log.truncate_to(stood)?,
                (Some(stood), Some(record)) if lines + 1 == stood => log.append(record)?,
                _ => {}
            }
        }
        Ok(MetricsLog {
            log: RefCell::new(Some(log)),
        })
    }

    /// Lines the log holds; None for a stream.
    fn lines(&self) -> Option<usize> {
        self.log.borrow().as_ref().and_then(AppendLog::lines)
    }

    fn append(&self, record: &str) -> Result<()> {
        let mut slot = self.log.borrow_mut();
        let Some(log) = slot.as_mut() else {
            return Ok(());
        };
        match log.append(record) {
            Err(e) if log.is_stream() => {
                errln!("warning: --metrics: {e}; no more lines are written there");
                *slot = None;
                Ok(())
            }
            outcome => outcome,
        }
    }
}
