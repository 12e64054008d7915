function actmax_write_responses(folder, R)
% ACTMAX_WRITE_RESPONSES  Write the responses of one batch for the actmax bridge.
%   R is a struct with one row per presentation (any order, repeats allowed):
%     R.stimulus_id        n-by-1 cell array of strings, from the manifest
%     R.onset              n-by-1 stimulus onset, unix time in seconds (photodiode if you have it)
%     R.rates              n-by-channels spike rates in spikes/s
%   and optionally
%     R.fixation_broken    n-by-1 logical: the animal broke fixation during the stimulus
%     R.dropped_frames     n-by-1 number of frames the display dropped
%     R.photodiode_onset   n-by-1 photodiode onset, same clock as onset (NaN: none)
%     R.baseline_rates     n-by-channels rates before onset, with
%     R.baseline_window_ms 1-by-2 [start end] in ms relative to onset, e.g. [-100 0]
%     R.window_ms          1-by-2 counting window if not the manifest's response_window_ms
%   The file is written as writing.mat and then renamed to responses.mat, so the bridge never
%   reads a half-written file. Works in MATLAB and GNU Octave.
tmp = fullfile(folder, 'writing.mat');
R.stimulus_id = R.stimulus_id(:);
save(tmp, '-struct', 'R', '-v7');
movefile(tmp, fullfile(folder, 'responses.mat'));
end
