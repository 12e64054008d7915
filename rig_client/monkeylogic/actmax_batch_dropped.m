function dropped = actmax_batch_dropped(folder)
% ACTMAX_BATCH_DROPPED  Whether the bridge closed or superseded the batch in FOLDER.
%   closed.json: the server will take no results for it; superseded.json: a newer batch of its thread
%   arrived (its unanswered stimuli again after the batch timeout, or a later generation). Either way
%   the rest of the batch would be shown for nothing: the user loop moves on to the next batch.
%   Works in MATLAB and GNU Octave.
dropped = exist(fullfile(folder, 'closed.json'), 'file') == 2 || ...
          exist(fullfile(folder, 'superseded.json'), 'file') == 2;
end
