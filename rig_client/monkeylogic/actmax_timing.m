% ACTMAX_TIMING  MonkeyLogic 2 timing script: fixate, show one actmax image, hold fixation.
%   TaskObject 1: fixation point; TaskObject 2: the image (set by actmax_userloop.m).
%   Stores the onset (unix time) and dropped frames in TrialRecord.User for the user loop.
%   Trial errors: 0 correct, 3 fixation broken during the image, 4 no fixation (not shown).
fixation_point = 1;
image = 2;
editable('wait_for_fix', 'initial_fix', 'show_ms', 'fix_radius');
wait_for_fix = 2000;   % ms to acquire fixation
initial_fix = 300;     % ms of fixation before the image
show_ms = 200;         % image duration
fix_radius = 1.5;      % degrees

toggleobject(fixation_point, 'eventmarker', 10);
if ~eyejoytrack('acquirefix', fixation_point, fix_radius, wait_for_fix)
    toggleobject(fixation_point);
    trialerror(4);  % no fixation: the image was not shown, the user loop repeats it
    return
end
if ~eyejoytrack('holdfix', fixation_point, fix_radius, initial_fix)
    toggleobject(fixation_point);
    trialerror(3);
    return
end
onset_ms = toggleobject(image, 'eventmarker', 20);  % trial time of the flip that showed it
% Unix time of that flip: now minus the time since the flip. Unix time is UTC (`now` is local
% time); before MATLAB R2014b use java.lang.System.currentTimeMillis() / 1000.
if exist('OCTAVE_VERSION', 'builtin')
    unix_now = time();
else
    unix_now = posixtime(datetime('now', 'TimeZone', 'UTC'));
end
TrialRecord.User.onset_unix = unix_now - (trialtime - onset_ms) / 1000;
held = eyejoytrack('holdfix', fixation_point, fix_radius, show_ms);
toggleobject([fixation_point image], 'eventmarker', 30);
TrialRecord.User.dropped_frames = 0;  % from your frame-timing check if you run one
if held
    trialerror(0);
else
    trialerror(3);  % fixation broken while the image was on: not scored, shown again
end
