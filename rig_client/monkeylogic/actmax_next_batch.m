function folder = actmax_next_batch(root)
% ACTMAX_NEXT_BATCH  The oldest batch folder under ROOT still waiting for responses ('' if none).
%   A batch waits until the rig writes responses.mat and the bridge answers with ack.json. The
%   bridge marks a batch the server closed with closed.json, and one whose stimuli came again in a
%   newer batch (or whose generation the server moved past) with superseded.json: both are skipped.
%   Works in MATLAB and GNU Octave.
folder = '';
listing = dir(fullfile(root, 'batch-*'));
names = sort({listing([listing.isdir]).name});
done = {'ack.json', 'responses.mat'};
for k = 1:numel(names)
    candidate = fullfile(root, names{k});
    if ~any(cellfun(@(name) exist(fullfile(candidate, name), 'file') == 2, done)) && ...
            ~actmax_batch_dropped(candidate)
        folder = candidate;
        return
    end
end
end
