/**
 * aidc's JupyterLab extension: the "AI Data Center" sidebar in the left area, with a
 * command to open it and its refresh interval in the settings editor.
 */
import {
  ILayoutRestorer,
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import { ICommandPalette } from '@jupyterlab/apputils';
import { ISettingRegistry } from '@jupyterlab/settingregistry';
import { LabIcon } from '@jupyterlab/ui-components';

import iconSvg from '../style/icon.svg';
import { AidcSidebar } from './sidebar';

const PLUGIN_ID = 'aidc:plugin';
const OPEN_COMMAND = 'aidc:open-sidebar';

export const aidcIcon = new LabIcon({ name: 'aidc:data-center', svgstr: iconSvg });

const plugin: JupyterFrontEndPlugin<void> = {
  id: PLUGIN_ID,
  description: 'The AI Data Center sidebar: my GPUs, quota, queue place and jobs.',
  autoStart: true,
  optional: [ILayoutRestorer, ICommandPalette, ISettingRegistry],
  activate: (
    app: JupyterFrontEnd,
    restorer: ILayoutRestorer | null,
    palette: ICommandPalette | null,
    settings: ISettingRegistry | null
  ) => {
    const sidebar = new AidcSidebar();
    sidebar.title.icon = aidcIcon;
    sidebar.title.caption = 'AI Data Center';
    app.shell.add(sidebar, 'left', { rank: 700 });
    restorer?.add(sidebar, 'aidc-sidebar');

    app.commands.addCommand(OPEN_COMMAND, {
      label: 'AI Data Center: Open Sidebar',
      execute: () => app.shell.activateById(sidebar.id)
    });
    palette?.addItem({ command: OPEN_COMMAND, category: 'AI Data Center' });

    if (settings) {
      settings
        .load(PLUGIN_ID)
        .then(loaded => {
          const apply = () => {
            sidebar.refreshInterval = loaded.get('refreshInterval').composite as number;
          };
          apply();
          loaded.changed.connect(apply);
        })
        .catch(reason => console.error('aidc: cannot load its settings', reason));
    }
  }
};

export default plugin;
