function [rates, baseline] = actmax_count_spikes(onset, window_ms, baseline_ms) %#ok<INUSD>
% ACTMAX_COUNT_SPIKES  Spike rates per channel around one stimulus onset: connect your recorder.
%   ONSET is unix time in seconds. Return RATES (1-by-channels, spikes/s in
%   [onset + window_ms(1), onset + window_ms(2)) ms) and BASELINE (the same in baseline_ms).
%   This is the one function a lab writes: ask the recording system (Blackrock cbmex, Plexon,
%   Open Ephys, an LSL inlet) for the spike times of each channel and count them, e.g.
%       rates = arrayfun(@(c) sum(t{c} >= onset + window_ms(1)/1000 & ...
%                                  t{c} < onset + window_ms(2)/1000), 1:numel(t)) ...
%               / (diff(window_ms) / 1000);
%   with the spike times t{c} on the same clock as ONSET (docs/rigs.md, "Clock alignment").
error('actmax:count', ['actmax_count_spikes.m is a template: connect it to your recording ' ...
      'system (see the comments in the file)']);
end
