function folder = actmax_next_batch(root)
% ACTMAX_NEXT_BATCH  The oldest batch folder under ROOT still waiting for responses ('' if none).
%   A batch waits until the rig writes responses.mat and the bridge answers with ack.json.
%   Works in MATLAB and GNU Octave.
folder = '';
listing = dir(fullfile(root, 'batch-*'));
names = sort({listing([listing.isdir]).name});
for k = 1:numel(names)
    candidate = fullfile(root, names{k});
    if ~exist(fullfile(candidate, 'ack.json'), 'file') && ...
       ~exist(fullfile(candidate, 'responses.mat'), 'file')
        folder = candidate;
        return
    end
end
end
