function [C, timingfile, userdefined_trialholder] = actmax_userloop(MLConfig, TrialRecord)
% ACTMAX_USERLOOP  MonkeyLogic 2 user loop: show actmax batches, one image per trial.
%   Set ACTMAX_FOLDER below to the folder given to `actmax rig bridge --folder`. Each trial shows
%   the next image of the current batch with actmax_timing.m. A trial the animal aborts before the
%   image appeared is repeated; a broken fixation during the image is reported as such (the
%   server then shows that image again). When every image of the batch was shown, the responses
%   are written and the loop waits for the next batch. Between trials it checks whether the bridge
%   closed or superseded the batch meanwhile (the server re-sent its stimuli after the batch timeout,
%   or moved on): then it writes the trials shown so far and goes on with the next batch.
ACTMAX_FOLDER = 'C:\actmax\rig-folder';
ACTMAX_WINDOW_MS = [50 200];      % counting window after onset: the manifest's response window
ACTMAX_BASELINE_MS = [-100 0];    % baseline window before onset

persistent initialised batch stimuli next R
C = [];
timingfile = 'actmax_timing.m';
userdefined_trialholder = '';
if isempty(initialised)  % MonkeyLogic's first call only asks for the timing file
    initialised = true;
    batch = '';
    return
end

% The previous trial: record it if its image was shown (actmax_timing stores onset_unix).
if ~isempty(batch) && isfield(TrialRecord.User, 'onset_unix') && ~isempty(TrialRecord.User.onset_unix)
    onset = TrialRecord.User.onset_unix;
    [rates, baseline] = actmax_count_spikes(onset, ACTMAX_WINDOW_MS, ACTMAX_BASELINE_MS);
    R.stimulus_id{end + 1, 1} = stimuli(next).stimulus_id;
    R.onset(end + 1, 1) = onset;
    R.rates(end + 1, :) = rates;
    R.baseline_rates(end + 1, :) = baseline;
    R.fixation_broken(end + 1, 1) = TrialRecord.TrialErrors(end) == 3;  % 3 = break fixation
    R.dropped_frames(end + 1, 1) = TrialRecord.User.dropped_frames;
    R.photodiode_onset(end + 1, 1) = NaN;  % fill in from your photodiode if you record one
    next = next + 1;
end
TrialRecord.User.onset_unix = [];

% The batch is done when every image was shown, or when the bridge closed or superseded it meanwhile
% (its other images would be shown for nothing). The trials shown are written as its responses (the
% bridge still sends those of a superseded batch).
if ~isempty(batch) && (next > numel(stimuli) || actmax_batch_dropped(batch))
    if ~isempty(R.onset)
        R.window_ms = ACTMAX_WINDOW_MS;  % the window counted: the record says so if it is not the manifest's
        R.baseline_window_ms = ACTMAX_BASELINE_MS;
        actmax_write_responses(batch, R);
    end
    batch = '';
end

% A new batch when the last one is done: wait for the bridge to write it.
while isempty(batch)
    batch = actmax_next_batch(ACTMAX_FOLDER);
    if isempty(batch)
        pause(0.1);
    else
        stimuli = actmax_read_manifest(batch);
        next = 1;
        R = struct('stimulus_id', {{}}, 'onset', [], 'rates', [], 'baseline_rates', [], ...
                   'fixation_broken', [], 'dropped_frames', [], 'photodiode_onset', []);
    end
end

% TaskObject 1 is the fixation point, 2 the image (shown at the size set in the MonkeyLogic
% main menu's pixels-per-degree; see README.md).
C = {'fix(0,0)', sprintf('pic(%s,0,0)', stimuli(next).file)};
end
